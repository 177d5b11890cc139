"""``chemgen sample``: generate structures with a trained model (one command per unconditional model) and sweep
sampling settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from chemgen.cli.common import (
    CommandLineError,
    DataVersions,
    StoreDir,
    at_least,
    checked,
    console,
    dataset_versions,
    err_console,
    folder_callback,
)

sample_app = typer.Typer(help="Generate structures with a trained model and score them.", no_args_is_help=True)


def _sample_model(model: str):
    def sample_model(
        kind: Annotated[str, typer.Option(help="A dataset the model was trained on (qm9, mp20, perov5, mpts52, "
                                               "carbon24), or molecule (= qm9) | crystal (= mp20).")],
        checkpoint: Annotated[Optional[str], typer.Option(
            "--model", help="Lineage folder (models/weights/...) or models:/NAME@ALIAS "
                            "(default: the shipped checkpoint).")] = None,
        n: Annotated[int, typer.Option(help="Number of structures.")] = 100,
        out: Annotated[Path, typer.Option(callback=folder_callback, help="Output folder.")] = Path("samples"),
        seed: int = 0,
        steps: Annotated[Optional[int], typer.Option(help="ODE steps (default: the model's config).")] = None,
        solver: Annotated[Optional[str], typer.Option(help="euler | heun (2nd order, fewer steps).")] = None,
        cfg_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
        score: Annotated[bool, typer.Option(help="Score the samples against the curated references.")] = True,
        store: StoreDir = None,
        data: DataVersions = None,
    ) -> None:
        from chemgen.datasets import resolve_dataset
        from chemgen.models.loading import load_model, shipped_model
        from chemgen.sampling.generate import sample_to_files
        from chemgen.scoring.report import generated_references, print_metrics

        checked(resolve_dataset, kind)  # an unknown name fails here, before any model loads
        at_least("--n", n, 1)
        at_least("--steps", steps, 1)
        versions = dataset_versions(data)
        references = None
        if score:   # before any sample is drawn: a dataset never curated costs its metrics, said now
            dataset, _ = resolve_dataset(kind)
            references = generated_references(dataset, store, versions.get(dataset), required=False)
            for note in references.missing:
                err_console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)
        result = sample_to_files(load_model(checkpoint or shipped_model(model)), kind, n, out, seed=seed,
                                 num_steps=steps, solver=solver, cfg_scale=cfg_scale, score=score, store=store,
                                 versions=versions, references=references)
        console.print(f"{n} samples of {result['dataset']} in {result['seconds']:.1f} s "
                      f"({result['samples_per_second']:.1f}/s), {result['failures']} not decodable; files: "
                      + ", ".join(str(p) for p in result["files"].values()))
        if score:
            print_metrics(result["metrics"], console, title=f"{result['dataset']} scores")

    sample_model.__doc__ = (f"Generate structures with {model}: molecules (SDF + XYZ) or crystals (CIF + XYZ), "
                            "a CSV summary and scores.")
    return sample_model


@sample_app.command("sweep")
def sample_sweep(
    kind: Annotated[str, typer.Option(help="A dataset (qm9, mp20, ...) or molecule | crystal.")],
    generator: Annotated[str, typer.Option(help="Which model's shipped checkpoint, when --model is not given.")] = "adit",
    model: Annotated[Optional[str], typer.Option(help="Lineage folder or models:/NAME@ALIAS "
                                                      "(default: the shipped checkpoint).")] = None,
    n: Annotated[int, typer.Option(help="Samples per setting (the same seeds in every cell).")] = 200,
    cfg: Annotated[Optional[list[float]], typer.Option(help="CFG scales (default 1 1.5 2 3 4).")] = None,
    steps: Annotated[Optional[list[int]], typer.Option(help="ODE steps (default 25 50 100).")] = None,
    solver: Annotated[Optional[list[str]], typer.Option(help="euler and/or heun (default both).")] = None,
    out: Annotated[Path, typer.Option(callback=folder_callback, help="Folder for sweep.csv and sweep.png.")] = Path("sweep"),
    seed: int = 0,
    store: StoreDir = None,
) -> None:
    """Sweep sampling settings (CFG scale x steps x solver) on one model and score every cell; sweep.csv is
    rewritten after every cell and a rerun into the same --out resumes."""
    from chemgen.datasets import resolve_dataset
    from chemgen.models.loading import load_model, shipped_model
    from chemgen.models.specs import model_spec
    from chemgen.sampling.sweep import PRIMARY, plot_sweep, sampling_sweep
    from chemgen.io import atomic_write

    dataset, kind_name = checked(resolve_dataset, kind)
    at_least("--n", n, 1)
    for value in steps or []:
        at_least("--steps", value, 1)
    bad = [s for s in solver or [] if s not in ("euler", "heun")]  # the flow-matching solvers the sweep compares
    if bad:
        raise CommandLineError(f"--solver must be euler or heun, got {', '.join(bad)}")
    checkpoint = model or shipped_model(checked(model_spec, generator).name)
    out.mkdir(parents=True, exist_ok=True)
    table = sampling_sweep(load_model(checkpoint), dataset, n,
                           cfg or [1.0, 1.5, 2.0, 3.0, 4.0], steps or [25, 50, 100], solver or ["euler", "heun"],
                           seed=seed, store=store, checkpoint=out / "sweep.csv")
    with atomic_write(out / "sweep.csv") as handle:
        table.to_csv(handle, index=False)
    primary = PRIMARY[kind_name]
    plot = plot_sweep(table, primary, out / "sweep.png")
    grid = Table(title=f"{dataset}: {primary} by setting ({n} samples each)")
    for column in table.columns:
        grid.add_column(column)
    for row in table.itertuples(index=False):
        grid.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(grid)
    best = table.loc[table[primary].idxmax()]
    console.print(f"best: {best.solver}, {int(best.steps)} steps, CFG {best.cfg_scale:g} ({primary} {best[primary]:.3f}); "
                  f"wrote {out / 'sweep.csv'} and {plot}")


def _register_model_commands() -> None:
    """``chemgen sample MODEL`` for every model that samples a dataset unconditionally (a conditional model,
    DiffSpectra, samples through its own command: ``chemgen elucidate``)."""
    from chemgen.models.specs import MODELS

    for name, spec in MODELS.items():
        if spec.sample_datasets:
            sample_app.command(name)(_sample_model(name))


_register_model_commands()

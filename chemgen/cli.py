"""The ``chemgen`` command. Each command parses its options and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from chemgen.atoms import InvalidSystemError
from chemgen.config import ConfigError
from chemgen.data.store import StoreError
from chemgen.io import StructureFileError

app = typer.Typer(help="chemgen: curated data, generative models and reference-exact scoring for molecules and crystals.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Curate datasets into the versioned store and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train generative models (tracked in MLflow, resumable).", no_args_is_help=True)
app.add_typer(train_app, name="train")
sample_app = typer.Typer(help="Generate structures with a trained model and score them.", no_args_is_help=True)
app.add_typer(sample_app, name="sample")
flows_app = typer.Typer(help="Prefect flows: serve deployments, run screening.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")
registry_app = typer.Typer(help="The MLflow model registry: versions, aliases, promotion.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

console = Console()
err_console = Console(stderr=True)

# Errors a user can fix: shown as one clear line and a non-zero exit, never a traceback.
USER_ERRORS = (StructureFileError, StoreError, InvalidSystemError, ConfigError, FileNotFoundError, KeyError, ValueError)


def _fail(err: Exception) -> None:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder with the dataset's CSVs, or its parent (default: $CHEMGEN_DATA_DIR or ../shared/data).")]
StoreDir = Annotated[Optional[Path], typer.Option(
    "--store", help="Curated store folder (default: $CHEMGEN_HOME/datasets, CHEMGEN_HOME defaults to ./.chemgen).")]


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="qm9 | mp20 | mpts52 | perov5 | carbon24")],
    data_dir: DataDir = None,
    store: StoreDir = None,
    workers: Annotated[int, typer.Option(help="Processes for CIF parsing (crystal sets).")] = 1,
    limit: Annotated[Optional[int], typer.Option(help="Curate only the first N rows of each source file.")] = None,
    force: Annotated[bool, typer.Option(help="Curate again even if this input was curated before.")] = False,
) -> None:
    """Curate one dataset into a new version of the store (a no-op when the input is unchanged)."""
    from chemgen.data import BUILDERS
    from chemgen.data.store import curate
    from chemgen.data.summary import print_curation

    try:
        if name not in BUILDERS:
            raise KeyError(f"unknown dataset {name!r} (known: {', '.join(BUILDERS)})")
        kwargs = {"limit": limit}
        if name == "qm9":
            if data_dir:
                kwargs["data_dir"] = data_dir
        else:
            kwargs.update(data_dir=data_dir, workers=workers)
        result = curate(BUILDERS[name](**kwargs), root=store, force=force)
    except USER_ERRORS as err:
        _fail(err)
    print_curation(result, console)


@data_app.command("info")
def data_info(
    name: Annotated[Optional[str], typer.Argument(help="Dataset to describe; all curated datasets if omitted.")] = None,
    version: Annotated[str, typer.Option(help="Version hash, or 'latest'.")] = "latest",
    store: StoreDir = None,
    plot: Annotated[Optional[Path], typer.Option(help="Folder for PNG plots of the element and size histograms.")] = None,
    verify: Annotated[bool, typer.Option(help="Recompute every shard's content hash.")] = False,
) -> None:
    """Counts, splits, content hashes and the element histogram of curated datasets."""
    from chemgen.data.store import list_datasets, read_manifest
    from chemgen.data.store import verify as verify_shards
    from chemgen.data.summary import plot_dataset, print_manifest

    try:
        names = [name] if name else list(list_datasets(store))
        if not names:
            raise StoreError("the store is empty: run `chemgen data prepare qm9` first")
        for dataset in names:
            manifest = read_manifest(dataset, version, store)
            print_manifest(manifest, console)
            if verify:
                problems = verify_shards(dataset, version, store)
                for problem in problems:
                    err_console.print(f"[red]{problem}[/]")
                console.print("[green]all shard hashes match[/]" if not problems else "")
                if problems:
                    raise typer.Exit(code=1)
            if plot:
                for path in plot_dataset(manifest, plot):
                    console.print(f"plot: {path}")
    except USER_ERRORS as err:
        _fail(err)


@app.command("run")
def run_main_job(
    data_dir: DataDir = None,
    profile: Annotated[str, typer.Option(help="demo: small slices, minutes on 2 cores; nightly: every row, cpu config.")] = "demo",
) -> None:
    """The main job: the nightly retraining flow (curate, train, sample, score, register, gate) and a summary."""
    from chemgen.pipeline import run_main

    try:
        run_main(profile=profile, data_dir=data_dir, console=console)
    except USER_ERRORS as err:
        _fail(err)


@app.command("convert")
def convert(
    source: Annotated[Path, typer.Argument(help="Input structure file (.sdf, .cif, .xyz, .extxyz).")],
    target: Annotated[Path, typer.Argument(help="Output structure file; the format follows the extension.")],
) -> None:
    """Convert structure files between SDF, CIF and (extended) XYZ."""
    from chemgen import io

    try:
        systems = io.read(source)
        io.write(target, systems)
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"wrote {len(systems)} structure(s) to {target}")


Config = Annotated[str, typer.Option(help="Config name in models/ (tiny, cpu, gpu-quick, dit-s, dit-b) or a YAML path.")]
Accelerator = Annotated[str, typer.Option(help="auto | cpu | gpu")]


def _train(stage: str, config: str, out: Optional[Path], vae: Optional[Path], store: Optional[Path], accelerator: str,
           devices: int, max_steps: Optional[int], max_minutes: Optional[float], resume: bool) -> Path:
    from chemgen.config import load_config
    from chemgen.models.adit.workflow import train
    from chemgen.paths import chemgen_home

    cfg = load_config(config)
    out = out or chemgen_home() / "models" / cfg.name / stage
    outcome = train(stage, cfg, out, vae_path=vae, store=store, accelerator=accelerator, devices=devices,
                    max_steps=max_steps, max_minutes=max_minutes, resume=resume)
    console.print(f"[bold green]{stage} trained[/]: {outcome.steps} steps in {outcome.seconds:.1f} s "
                  f"({outcome.systems_per_second:.1f} systems/s), MLflow run {outcome.run_id}")
    for key in sorted(outcome.metrics):
        if key.startswith("val/"):
            console.print(f"  {key} = {outcome.metrics[key]:.4f}")
    return out


@train_app.command("adit-vae")
def train_adit_vae(config: Config = "tiny", out: Annotated[Optional[Path], typer.Option(help="Output folder.")] = None,
                   store: StoreDir = None, accelerator: Accelerator = "auto", devices: int = 1,
                   max_steps: Optional[int] = None, max_minutes: Optional[float] = None,
                   resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = True) -> None:
    """Stage 1: train ADiT's all-atom VAE on the curated datasets of the config."""
    try:
        out = _train("vae", config, out, None, store, accelerator, devices, max_steps, max_minutes, resume)
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"next: chemgen train adit-dit --config {config} --vae {out / 'vae.pt'}")


@train_app.command("adit-dit")
def train_adit_dit(vae: Annotated[Path, typer.Option(help="vae.pt from `chemgen train adit-vae`.")],
                   config: Config = "tiny", out: Annotated[Optional[Path], typer.Option(help="Output model folder.")] = None,
                   store: StoreDir = None, accelerator: Accelerator = "auto", devices: int = 1,
                   max_steps: Optional[int] = None, max_minutes: Optional[float] = None, resume: bool = True,
                   register: Annotated[Optional[str], typer.Option(help="Register the model under this name (alias challenger).")] = None) -> None:
    """Stage 2: train the latent DiT on the frozen VAE; the output folder is the model."""
    try:
        out = _train("dit", config, out, vae, store, accelerator, devices, max_steps, max_minutes, resume)
        if register:
            from chemgen.models.adit.workflow import register as register_model

            version = register_model(out, register)
            console.print(f"registered {register} version {version.version} (alias challenger)")
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"model: {out}  (sample: chemgen sample adit --model {out} --kind crystal --n 100 --out samples/)")


@sample_app.command("adit")
def sample_adit(
    model: Annotated[str, typer.Option(help="Model folder (vae.pt + dit.pt) or models:/NAME@ALIAS.")],
    kind: Annotated[str, typer.Option(help="molecule | crystal")],
    n: Annotated[int, typer.Option(help="Number of structures.")] = 100,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("samples"),
    seed: int = 0,
    steps: Annotated[Optional[int], typer.Option(help="ODE steps (default: the model's config, 100).")] = None,
    solver: Annotated[Optional[str], typer.Option(help="euler (ADiT) | heun (2nd order, fewer steps).")] = None,
    cfg_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (ADiT: 2.0).")] = None,
    score: Annotated[bool, typer.Option(help="Score the samples against the curated references.")] = True,
    store: StoreDir = None,
) -> None:
    """Generate molecules (SDF + XYZ) or crystals (CIF + XYZ) with a CSV summary and scores."""
    from chemgen.models.adit.workflow import load_model, sample_to_files
    from chemgen.scoring.report import print_metrics

    try:
        if kind not in ("molecule", "crystal"):
            raise ValueError(f"--kind must be molecule or crystal, got {kind!r}")
        if n < 1:
            raise ValueError("--n must be at least 1")
        result = sample_to_files(load_model(model), kind, n, out, seed=seed, num_steps=steps, solver=solver,
                                 cfg_scale=cfg_scale, score=score, store=store)
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"{n} {kind}s in {result['seconds']:.1f} s ({result['samples_per_second']:.1f}/s), "
                  f"{result['failures']} not decodable; files: " + ", ".join(str(p) for p in result["files"].values()))
    if score:
        print_metrics(result["metrics"], console, title=f"{kind} scores")


@app.command("score")
def score(
    path: Annotated[Path, typer.Argument(help="SDF, XYZ/extXYZ, a CIF file or folder, or a CSV (cif or xyz column).")],
    kind: Annotated[str, typer.Option(help="molecule | crystal")],
    protocol: Annotated[Optional[list[str]], typer.Option(help="Molecules: edm and/or rdkit (default both).")] = None,
    preset: Annotated[str, typer.Option(help="Crystals: StructureMatcher preset, cdvae or mattergen.")] = "cdvae",
    validity: Annotated[str, typer.Option(help="Crystals: cdvae, or adit (adds the (50, 130) degree lattice-angle rule).")] = "cdvae",
    reference: Annotated[Optional[Path], typer.Option(help="Novelty reference structures (default: the curated store).")] = None,
    stability: Annotated[bool, typer.Option(help="Crystals: CHGNet relaxation and E_hull (slow: ~1 s per structure).")] = False,
    out: Annotated[Path, typer.Option(help="Folder for scores.json, per_sample.csv and plots.")] = Path("scores"),
    store: StoreDir = None,
) -> None:
    """Score generated structures with the reference protocols; prints a table, writes JSON, CSV and PNGs."""
    from chemgen.scoring import report

    try:
        systems, reasons = report.read_structures(path, kind)
        protocols = tuple(protocol or ("edm", "rdkit"))
        if kind == "molecule":
            if reference is not None:
                from chemgen.scoring.molecules import reference_smiles

                ref_systems = [s for s in report.read_structures(reference, "molecule")[0] if s is not None]
                references = reference_smiles(ref_systems, protocols)
            else:
                references = _optional_reference(lambda: report.qm9_reference_smiles(protocols, store))
            metrics, table, scores = report.score_systems(systems, kind, reasons, protocols=protocols, references=references)
        else:
            if reference is not None:
                references = [s for s in report.read_structures(reference, "crystal")[0] if s is not None]
            else:
                references = _optional_reference(lambda: report.mp20_references(store))
            metrics, table, scores = report.score_systems(systems, kind, reasons, preset=preset, references=references,
                                                          stability=stability, validity=validity)
        paths = report.save_report(metrics, table, scores, kind, out, context={"input": str(path)})
    except USER_ERRORS as err:
        _fail(err)
    report.print_metrics(metrics, console, title=f"{kind} scores: {path}")
    unreadable = sum(r is not None for r in reasons)
    if unreadable:
        console.print(f"[yellow]{unreadable} item(s) could not be read and were scored invalid (see per_sample.csv)[/]")
    console.print(f"wrote {paths['json']}, {paths['csv']} and {len(paths) - 2} plot(s)")


@flows_app.command("serve")
def flows_serve(profile: Annotated[str, typer.Option(help="Profile of the nightly retraining.")] = "nightly",
                cron: Annotated[str, typer.Option(help="Cron schedule of the nightly retraining.")] = "0 2 * * *") -> None:
    """Serve every flow from this process: nightly retraining on a schedule, screening and curation on demand."""
    from workflows.deploy import serve_all

    serve_all(profile, cron)


@flows_app.command("screen")
def flows_screen(n: int = 100, model: str = "models:/chemgen-adit@champion", seed: int = 0,
                 relax_steps: int = 200, out: Optional[Path] = None,
                 dask: Annotated[bool, typer.Option(help="Fan relaxations out on a local Dask cluster.")] = False,
                 dask_address: Annotated[Optional[str], typer.Option(help="Scheduler of an existing Dask cluster.")] = None) -> None:
    """Screen generated crystals: validity, S.U.N. with CHGNet relaxation and the MP-20 hull; writes CIFs, CSV, report."""
    from workflows.screen import crystal_screening, with_dask

    try:
        flow_fn = with_dask(address=dask_address) if dask or dask_address else crystal_screening
        result = flow_fn(n=n, model=model, seed=seed, relax_steps=relax_steps, out_dir=str(out) if out else None)
    except USER_ERRORS as err:
        _fail(err)
    from chemgen.scoring.report import print_metrics

    print_metrics(result["metrics"], console, title=f"screening of {n} crystals")
    console.print(f"report: {result['out_dir']}/report.md")


@registry_app.command("list")
def registry_list() -> None:
    """Registered models with their versions and aliases."""
    from datetime import datetime

    from chemgen import gates, tracking

    client = tracking.client()
    table = Table(title=f"registry at {tracking.tracking_uri()}", title_justify="left")
    for column in ("model", "version", "aliases", "created", "gate decision"):
        table.add_column(column)
    for model in client.search_registered_models():
        for found in sorted(client.search_model_versions(f"name='{model.name}'"), key=lambda v: int(v.version)):
            v = client.get_model_version(model.name, found.version)  # search results omit aliases
            created = datetime.fromtimestamp(v.creation_timestamp / 1000).isoformat(timespec="seconds")
            table.add_row(model.name, str(v.version), ", ".join(v.aliases), created, v.tags.get(gates.DECISION_TAG, ""))
    console.print(table)


@registry_app.command("show")
def registry_show(name: str, version: Annotated[Optional[str], typer.Option(help="Version (default: champion).")] = None) -> None:
    """One version's aliases, gate metrics, run and source."""
    from chemgen import gates, tracking

    try:
        v = tracking.client().get_model_version(name, version) if version else tracking.version_by_alias(name, tracking.CHAMPION)
        if v is None:
            raise KeyError(f"{name} has no champion yet")
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"{name} version {v.version}  aliases: {', '.join(v.aliases) or '-'}  run: {v.run_id}")
    for key, value in sorted(gates.recorded(name, v.version).items()):
        console.print(f"  gate {key} = {value:.4f}")
    console.print(f"  {v.tags.get(gates.DECISION_TAG, '')}")


@registry_app.command("promote")
def registry_promote(name: str, version: str) -> None:
    """Make a version the champion by hand (bypasses the gate)."""
    from chemgen import tracking

    tracking.promote(name, version)
    console.print(f"{name} version {version} is now champion")


@registry_app.command("rollback")
def registry_rollback(name: str) -> None:
    """Move champion back to the previous champion recorded in the version tags."""
    from chemgen import tracking

    try:
        previous = tracking.rollback(name)
    except USER_ERRORS as err:
        _fail(err)
    console.print(f"{name}: champion is version {previous} again")


def _optional_reference(build):
    """Novelty needs a curated reference; without one the other metrics are still computed."""
    try:
        return build()
    except StoreError as err:
        err_console.print(f"[yellow]no novelty reference ({err}); novelty is not reported[/]", soft_wrap=True)
        return None


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

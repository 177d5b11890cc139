"""The ``chemgen`` command. Each command parses its options and calls one library function.

Errors have one handler (`_Commands.invoke`): a `ChemgenError` (or the OS refusing a path the user gave) prints
as one red ``error: ...`` line with exit code 1; any other exception is a bug and keeps its traceback, and
``chemgen --debug`` (or ``CHEMGEN_DEBUG=1``) shows the traceback of user errors too. Options are checked before
any work starts: folders named by ``--out`` and friends must be folders, names and values must be known."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from chemgen.data.store import StoreError
from chemgen.errors import ChemgenError

T = TypeVar("T")


class CommandLineError(ChemgenError, ValueError):
    """An option value or a name given on the command line that chemgen cannot use."""


# Errors a user can fix: chemgen's own, and the OS's answer about a path the user gave. They print as one red
# line and exit 1; anything else is a bug and keeps its traceback (so does every error under --debug).
USER_ERRORS = (ChemgenError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class _Commands(TyperGroup):
    """The top-level command group: every command (and every option callback) runs inside its one handler."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if ctx.params.get("debug"):
                raise
            _fail(err)


app = typer.Typer(cls=_Commands, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="chemgen: curated data, generative models and reference-exact scoring for molecules and crystals.")
data_app = typer.Typer(help="Curate datasets into the versioned store and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train generative models (tracked in MLflow, resumable).", no_args_is_help=True)
app.add_typer(train_app, name="train")
sample_app = typer.Typer(help="Generate structures with a trained model and score them.", no_args_is_help=True)
app.add_typer(sample_app, name="sample")
flows_app = typer.Typer(help="Prefect flows: serve deployments, run screening.", no_args_is_help=True)
app.add_typer(flows_app, name="flows")
spectra_app = typer.Typer(help="Vibrational spectra: xTB IR/Raman of your molecules; spectrum files.", no_args_is_help=True)
app.add_typer(spectra_app, name="spectra")
registry_app = typer.Typer(help="The MLflow model registry: versions, aliases, promotion.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

console = Console()
err_console = Console(stderr=True)


Debug = Annotated[bool, typer.Option(
    "--debug", envvar="CHEMGEN_DEBUG",
    help="Show the traceback of user errors too (bad files, unknown names); CHEMGEN_DEBUG=1 does the same.")]


@app.callback()
def _global_options(debug: Debug = False) -> None:
    """Nothing to do here: `_Commands.invoke` reads --debug from the parsed context."""


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])  # str(KeyError) quotes its message
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # without "[Errno 2]"
    return str(err)


def _fail(err: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {escape(_message(err))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def _checked(validate: Callable[..., T], *args: Any) -> T:
    """Call one of the library's pure validators of an option value (a name lookup, a value parser): its ValueError
    or KeyError can only be about the user's input. Never wrap real work this way: there it would hide a bug."""
    try:
        return validate(*args)
    except (ValueError, KeyError) as err:
        if isinstance(err, ChemgenError):
            raise
        raise CommandLineError(_message(err)) from err


def _at_least(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise CommandLineError(f"{option} must be at least {minimum}, got {value}")


def _label(param: typer.CallbackParam) -> str:
    return (param.name or "").upper() if param.param_type_name == "argument" else param.opts[0]


def _folder(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Option callback for folders chemgen writes into (or reads): when the path exists it must be a folder, and so
    must its nearest existing parent. Said up front, naming the path, not as a FileExistsError from deep in a writer."""
    if value is not None:
        option = _label(param)
        if value.exists() and not value.is_dir():
            raise CommandLineError(f"{option} {value}: exists and is not a folder")
        parent = next((p for p in value.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise CommandLineError(f"{option} {value}: {parent} is a file, not a folder")
    return value


def _file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Option callback for a file chemgen writes: a folder of that name is an error said up front."""
    if value is not None and value.is_dir():
        raise CommandLineError(f"{_label(param)} {value}: is a folder, not a file name")
    return value


DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder with the dataset's CSVs, or its parent (default: $CHEMGEN_DATA_DIR, or ../shared/data beside a source checkout).")]
StoreDir = Annotated[Optional[Path], typer.Option(
    "--store", callback=_folder, help="Curated store folder (default: $CHEMGEN_HOME/datasets, CHEMGEN_HOME defaults to ./.chemgen).")]


SpectraDir = Annotated[Optional[Path], typer.Option(
    "--out", callback=_folder, help="qm9-spectra only: the shard folder (default: $CHEMGEN_SPECTRA_DIR/qm9-xtb or the repository's "
                  "datasets/spectra/qm9-xtb).")]


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="qm9 | qm9-spectra | mp20 | mpts52 | perov5 | carbon24")],
    data_dir: DataDir = None,
    store: StoreDir = None,
    workers: Annotated[int, typer.Option(help="Processes: CIF parsing (crystal sets) or xTB workers (qm9-spectra).")] = 1,
    limit: Annotated[Optional[int], typer.Option(
        help="Curate only the first N rows of each source file (qm9-spectra: the first N molecules of its order).")] = None,
    until: Annotated[Optional[str], typer.Option(
        help="qm9-spectra only: HH:MM local time; start no shard that would not finish by then.")] = None,
    out: SpectraDir = None,
    export_jobs: Annotated[Optional[Path], typer.Option(
        callback=_file, help="qm9-spectra only: write the uncomputed molecules in [--start, --limit) as a jobs file for "
             "`python -m chemgen.spectra.remote` on another machine, instead of computing them.")] = None,
    start: Annotated[int, typer.Option(help="qm9-spectra --export-jobs: first order position to export.")] = 0,
    import_shards: Annotated[Optional[Path], typer.Option(
        help="qm9-spectra only: add the shards of a spectra-shards.tar made by chemgen.spectra.remote.")] = None,
    shard_size: Annotated[int, typer.Option(
        help="qm9-spectra only: molecules per shard (smaller ones lose less at a deadline or a kill).")] = 500,
    force: Annotated[bool, typer.Option(help="Curate again even if this input was curated before.")] = False,
) -> None:
    """Curate one dataset into a new version of the store (a no-op when the input is unchanged)."""
    from chemgen.data import BUILDERS
    from chemgen.data.store import curate
    from chemgen.data.summary import print_curation

    _at_least("--workers", workers, 1)
    _at_least("--limit", limit, 0)
    if name == "qm9-spectra":
        if export_jobs or import_shards:
            return _spectra_transfer(export_jobs, import_shards, start, limit, out)
        return _prepare_spectra(workers, limit, until, out, shard_size)
    if name not in BUILDERS:
        raise CommandLineError(f"unknown dataset {name!r} (known: {', '.join(BUILDERS)}, qm9-spectra)")
    kwargs = {"limit": limit}
    if name == "qm9":
        if data_dir:
            kwargs["data_dir"] = data_dir
    else:
        kwargs.update(data_dir=data_dir, workers=workers)
    print_curation(curate(BUILDERS[name](**kwargs), root=store, force=force), console)


def _spectra_transfer(export_path: Path | None, archive: Path | None, start: int, limit: int | None,
                      out: Path | None) -> None:
    from chemgen.data import spectra
    from chemgen.spectra import remote

    folder = out or spectra.default_folder()
    if archive:
        added = remote.import_shards(archive, folder)
        console.print(f"added {len(added)} shard(s) from {archive}: {', '.join(added) or 'none new'}")
    if export_path:
        ranges = spectra.export_plan(folder, start, limit)
        frame = spectra.read_qm9_frame()
        remote.export_jobs(export_path, ranges, lambda f, e: spectra.make_molecules(range(f, e), frame),
                           spectra.SpectraSettings())
        console.print(f"wrote {sum(e - f for f, e in ranges):,} molecules in {len(ranges)} shard job(s) "
                      f"to {export_path}")


def _prepare_spectra(workers: int, limit: int | None, until: str | None, out: Path | None,
                     shard_size: int = 500) -> None:
    from chemgen.data.spectra import curate_spectra, parse_until
    from chemgen.spectra.summary import print_spectra_manifest

    _checked(parse_until, until)  # a malformed --until fails before the lock and the shard scan
    _at_least("--shard-size", shard_size, 1)
    report = curate_spectra(out, workers=workers, limit=limit, until=until, shard_size=shard_size)
    console.print(f"computed {report.computed:,} molecules in {report.seconds:,.0f} s "
                  f"({report.molecules_per_hour:,.0f} molecules/hour with {workers} worker(s)); "
                  f"{len(report.shards_written)} shard(s) written, {report.abandoned} abandoned at the deadline")
    print_spectra_manifest(report.manifest, console)


@data_app.command("info")
def data_info(
    name: Annotated[Optional[str], typer.Argument(help="Dataset to describe; all curated datasets if omitted.")] = None,
    version: Annotated[str, typer.Option(help="Version hash, or 'latest'.")] = "latest",
    store: StoreDir = None,
    plot: Annotated[Optional[Path], typer.Option(callback=_folder, help="Folder for PNG plots of the element and size histograms.")] = None,
    verify: Annotated[bool, typer.Option(help="Recompute every shard's content hash.")] = False,
    out: SpectraDir = None,
) -> None:
    """Counts, splits, content hashes and the element histogram of curated datasets."""
    from chemgen.data.store import list_datasets, read_manifest
    from chemgen.data.store import verify as verify_shards
    from chemgen.data.summary import plot_dataset, print_manifest

    if name == "qm9-spectra":
        return _spectra_info(plot, verify, out)
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


def _spectra_info(plot: Path | None, verify: bool, folder: Path | None = None) -> None:
    from chemgen.data.spectra import default_folder
    from chemgen.spectra import shards
    from chemgen.spectra.summary import plot_spectra_dataset, print_scale_fit, print_spectra_manifest

    folder = folder or default_folder()
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise shards.SpectraStoreError(f"{folder}: no spectra computed yet (run `chemgen data prepare qm9-spectra`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as err:  # a truncated or hand-edited manifest is the store's problem, not a bug here
        raise shards.SpectraStoreError(f"{manifest_path}: not readable JSON ({err})") from None
    print_spectra_manifest(manifest, console)
    if verify:
        problems = shards.verify(folder)
        for problem in problems:
            err_console.print(f"[red]{problem}[/]", highlight=False)
        if problems:
            raise typer.Exit(code=1)
        console.print("[green]every shard reads back and matches the manifest's hashes[/]")
        if manifest["counts"]["ok"]:
            print_scale_fit(folder, console)
    if plot:
        for path in plot_spectra_dataset(folder, plot):
            console.print(f"plot: {path}")


@spectra_app.command("compute")
def spectra_compute(
    molecules: Annotated[Optional[list[Path]], typer.Argument(help="SDF, XYZ/extXYZ or .smi files.")] = None,
    out: Annotated[Path, typer.Option("--out", callback=_folder,
                                      help="Folder for the JCAMP-DX files, PNGs and spectra.csv.")] = Path("spectra"),
    smiles: Annotated[Optional[list[str]], typer.Option("--smiles", help="A SMILES to embed in 3D (repeatable).")] = None,
    fwhm: Annotated[float, typer.Option(help="Lorentzian FWHM in cm^-1.")] = 15.0,
    raman: Annotated[bool, typer.Option(help="Also compute Raman activities (finite field).")] = True,
) -> None:
    """GFN2-xTB IR and Raman spectra of your molecules: JCAMP-DX, PNG and the relaxed geometry per molecule."""
    from chemgen.spectra.compute import SpectraSettings
    from chemgen.spectra.molecules import read_molecules, write_spectra

    if not molecules and not smiles:
        raise CommandLineError("give molecule files or --smiles")
    systems = read_molecules(list(molecules or []), list(smiles or []))
    results = write_spectra(systems, out, SpectraSettings(raman=raman), fwhm=fwhm)
    for r in results:
        console.print(f"{r.name}: {r.status}" + (f" -> {', '.join(str(p) for p in r.files)}" if r.files else ""),
                      highlight=False)
    failed = sum(r.status != "ok" for r in results)
    console.print(f"{len(results) - failed} of {len(results)} molecule(s) computed; summary {out / 'spectra.csv'}")
    if failed:
        raise typer.Exit(code=1 if failed == len(results) else 0)


@spectra_app.command("resample")
def spectra_resample(
    spectra: Annotated[list[Path], typer.Argument(help="JCAMP-DX (.jdx/.dx) or two-column CSV spectra.")],
    out: Annotated[Path, typer.Option("--out", callback=_folder,
                                      help="Folder for the resampled CSVs and PNGs.")] = Path("resampled"),
    kind: Annotated[Optional[str], typer.Option(help="ir | raman, when the file does not say.")] = None,
    x_units: Annotated[Optional[str], typer.Option(help="x units when a CSV header does not name them (cm-1, um, nm).")] = None,
) -> None:
    """Read spectra as the models will: units normalised, resampled onto 500-4,000 cm^-1 at 1 cm^-1, plotted."""
    from chemgen.spectra.files import read_spectrum, resample, write_csv
    from chemgen.spectra.broadening import GRID_CM1
    from chemgen.spectra.files import Spectrum
    from chemgen.spectra.molecules import safe_name
    from chemgen.spectra.plots import plot_ir_raman

    failed, taken = 0, set()
    for path in spectra:
        try:  # one unreadable file is reported and the others are still resampled
            spectrum = read_spectrum(path, kind=kind, x_units=x_units)
            values, covered = resample(spectrum)
        except USER_ERRORS as err:
            err_console.print(f"[bold red]error:[/] {escape(_message(err))}", soft_wrap=True, highlight=False)
            failed += 1
            continue
        name = safe_name(path.stem, taken)
        out.mkdir(parents=True, exist_ok=True)
        on_grid = Spectrum(GRID_CM1, values, spectrum.kind, spectrum.signal, title=name)
        write_csv(out / f"{name}.{spectrum.kind}.csv", on_grid)
        raman = values if spectrum.kind == "raman" else None
        plot_ir_raman(out / f"{name}.png", f"{path.name} ({spectrum.kind}, {spectrum.signal})", GRID_CM1,
                      values if spectrum.kind != "raman" else 0 * values, raman)
        console.print(f"{path}: {spectrum.kind}, {spectrum.signal}, {len(spectrum.x_cm1):,} points, covers "
                      f"{100 * covered.mean():.0f}% of the grid -> {out / (name + '.' + spectrum.kind + '.csv')}",
                      highlight=False)
    if failed:
        raise typer.Exit(code=1)


@app.command("run")
def run_main_job(
    data_dir: DataDir = None,
    profile: Annotated[str, typer.Option(help="demo: small slices, minutes on 2 cores; nightly: every row, cpu config.")] = "demo",
) -> None:
    """The main job: the nightly retraining flow (curate, train, sample, score, register, gate) and a summary."""
    from chemgen.pipeline import run_main
    from workflows.retrain import PROFILES

    if profile not in PROFILES:
        raise CommandLineError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    run_main(profile=profile, data_dir=data_dir, console=console)


@app.command("convert")
def convert(
    source: Annotated[Path, typer.Argument(help="Input structure file (.sdf, .cif, .xyz, .extxyz).")],
    target: Annotated[Path, typer.Argument(callback=_file,
                                           help="Output structure file; the format follows the extension.")],
) -> None:
    """Convert structure files between SDF, CIF and (extended) XYZ."""
    from chemgen import io

    systems = io.read(source)
    io.write(target, systems)
    console.print(f"wrote {len(systems)} structure(s) to {target}")


Config = Annotated[Optional[str], typer.Option(
    help="A shipped config (chemgen/configs: adit tiny, cpu, gpu-quick, dit-s, dit-b; gfmdiff and diffspectra tiny, "
         "cpu, gpu) or a YAML path (default: the config of the model's shipped checkpoint).")]


DataVersions = Annotated[Optional[list[str]], typer.Option(
    "--data", help="NAME@VERSION of a curated dataset to train on instead of its LATEST (repeatable); "
                   "`chemgen data prepare NAME --limit N` prints the version of its slice.")]


def _versions(data: Optional[list[str]]) -> dict[str, str]:
    from chemgen.data.store import parse_dataset_ref

    return {name: version for name, version in (_checked(parse_dataset_ref, ref) for ref in data or []) if version}


def _train_model(model: str):
    def train_model(
        config: Config = None,
        minutes: Annotated[Optional[str], typer.Option(
            help="Training minutes per stage, e.g. vae=10,dit=30 (a stage not named is not trained).")] = None,
        steps: Annotated[Optional[str], typer.Option(
            help="Optimiser steps per stage, e.g. vae=300,dit=300 (with --minutes: whichever ends first).")] = None,
        init: Annotated[Optional[Path], typer.Option(
            callback=_folder, help="Lineage to continue (default: the config's shipped lineage, models/weights/<model>-<config>, "
                 "if there is one).")] = None,
        fresh: Annotated[bool, typer.Option(help="Start from random weights instead of a lineage.")] = False,
        out: Annotated[Optional[Path], typer.Option(
            callback=_folder, help="Run folder (default: .chemgen/runs/<config>-<time>); rerun into it to resume.")] = None,
        samples: Annotated[Optional[int], typer.Option(
            help="Samples of each dataset saved in the run folder for scoring (default: 1,000 with --promote, the "
                 "shipped lineage's context; else none).")] = None,
        promote: Annotated[bool, typer.Option(
            help="Score the run and promote it into the lineage (--into) if the gate prefers it.")] = False,
        into: Annotated[Optional[Path], typer.Option(callback=_folder,
                                                     help="Lineage to promote into (default: --init's).")] = None,
        register: Annotated[Optional[str], typer.Option(
            help="Register the trained model in MLflow under this name (alias challenger).")] = None,
        tokens_per_batch: Annotated[Optional[int], typer.Option(
            help="Padded atoms per step (default: 65,536 on a GPU, 16 x the config's batch size on CPU).")] = None,
        sampling_steps: Annotated[Optional[int], typer.Option(
            help="Sampling steps of the scored samples (default: the config's; recorded in the evaluation "
                 "context, so use the shipped lineage's to be compared with it).")] = None,
        store: StoreDir = None,
        data: DataVersions = None,
    ) -> None:
        import time as _time

        from chemgen.config import load_config
        from chemgen.generation import jobs, lineage
        from chemgen.generation.protocol import generator_class, model_spec
        from chemgen.generation.runs import shipped_lineage
        from chemgen.generation.training import save_samples, stage_values
        from chemgen.paths import chemgen_home

        spec = model_spec(model)
        cfg = load_config(config or spec.shipped_config, model)
        stages = tuple(generator_class(model).stage_names)
        minute_budget = _checked(stage_values, minutes, stages, "minutes", float)
        step_budget = _checked(stage_values, steps, stages, "steps", int)
        if not minute_budget and not step_budget:
            raise CommandLineError(f"give --minutes or --steps for at least one of the stages {', '.join(stages)}")
        _at_least("--samples", samples, 1 if promote else 0)  # the gate compares sample scores
        if not spec.sample_datasets and (promote or samples):
            raise CommandLineError(f"{model} samples no dataset unconditionally, so its runs have nothing to score: "
                                   "--samples and --promote do not apply")
        _at_least("--tokens-per-batch", tokens_per_batch, 1)
        _at_least("--sampling-steps", sampling_steps, 1)
        versions = _versions(data)
        start = init if init is not None or fresh else shipped_lineage(cfg.name)
        start = start if start is not None and lineage.is_lineage(start) else None
        if init is not None and start is None:
            raise FileNotFoundError(f"{init}: not a lineage folder (manifest.json + weight shards)")
        samples = samples if samples is not None else (1000 if promote else 0)
        out = out or chemgen_home() / "runs" / f"{cfg.name}-{_time.strftime('%Y%m%d-%H%M%S')}"
        outcome = jobs.train(model, cfg, out, init=start, minutes=minute_budget, steps=step_budget, store=store,
                             versions=versions, tokens_per_batch=tokens_per_batch)
        console.print(f"[bold green]{model} trained[/] in {outcome.seconds / 60:.1f} min: steps {outcome.steps} "
                      f"(from {start or 'random weights'}); model {outcome.model_dir}; MLflow run {outcome.run_id}")
        if samples > 0:
            trained = jobs.load_lineage_model(outcome.model_dir)
            for dataset in spec.sample_datasets:
                save_samples(trained, dataset, samples, out / f"samples_{dataset}.pt", 500, seed=1000,
                             num_steps=sampling_steps)
        if promote:
            train_import(out, into=into or start or shipped_lineage(cfg.name), store=store)
        if register:
            version = jobs.register(outcome.model_dir, register)
            console.print(f"registered {register} version {version.version} (alias challenger)")

    train_model.__doc__ = (f"Train {model} through its lineage: every stage on the config's curated datasets "
                           "(MLflow-tracked, resumable), then sample, and optionally score, gate and promote.")
    return train_model


def _sample_model(model: str):
    def sample_model(
        kind: Annotated[str, typer.Option(help="A dataset the model was trained on (qm9, mp20, perov5, mpts52, "
                                               "carbon24), or molecule (= qm9) | crystal (= mp20).")],
        checkpoint: Annotated[Optional[str], typer.Option(
            "--model", help="Lineage folder (models/weights/...) or models:/NAME@ALIAS "
                            "(default: the shipped checkpoint).")] = None,
        n: Annotated[int, typer.Option(help="Number of structures.")] = 100,
        out: Annotated[Path, typer.Option(callback=_folder, help="Output folder.")] = Path("samples"),
        seed: int = 0,
        steps: Annotated[Optional[int], typer.Option(help="ODE steps (default: the model's config).")] = None,
        solver: Annotated[Optional[str], typer.Option(help="euler | heun (2nd order, fewer steps).")] = None,
        cfg_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
        score: Annotated[bool, typer.Option(help="Score the samples against the curated references.")] = True,
        store: StoreDir = None,
        data: DataVersions = None,
    ) -> None:
        from chemgen.dense import resolve_dataset
        from chemgen.generation import runs
        from chemgen.generation.jobs import load_model, sample_to_files
        from chemgen.scoring.report import print_metrics

        _checked(resolve_dataset, kind)  # an unknown name fails here, before any model loads
        _at_least("--n", n, 1)
        _at_least("--steps", steps, 1)
        result = sample_to_files(load_model(checkpoint or runs.shipped_model(model)), kind, n, out, seed=seed,
                                 num_steps=steps, solver=solver, cfg_scale=cfg_scale, score=score, store=store,
                                 versions=_versions(data))
        console.print(f"{n} samples of {result['dataset']} in {result['seconds']:.1f} s "
                      f"({result['samples_per_second']:.1f}/s), {result['failures']} not decodable; files: "
                      + ", ".join(str(p) for p in result["files"].values()))
        if score:
            print_metrics(result["metrics"], console, title=f"{result['dataset']} scores")

    sample_model.__doc__ = (f"Generate structures with {model}: molecules (SDF + XYZ) or crystals (CIF + XYZ), "
                            "a CSV summary and scores.")
    return sample_model


def _register_model_commands() -> None:
    from chemgen.generation.protocol import MODELS

    for name, spec in MODELS.items():
        train_app.command(name)(_train_model(name))
        if spec.sample_datasets:   # a conditional model (DiffSpectra) samples through its own command
            sample_app.command(name)(_sample_model(name))


@train_app.command("packs")
def train_packs(out: Annotated[Path, typer.Option(callback=_folder, help="Folder for train.pt, val.pt and data.txt.")],
                model: Annotated[str, typer.Option(help="Model whose config names the datasets.")] = "adit",
                config: Config = None, store: StoreDir = None, data: DataVersions = None) -> None:
    """Tensor packs of a config's datasets, for `python -m chemgen.generation.remote` on a GPU machine."""
    from chemgen.config import load_config
    from chemgen.generation.jobs import _first_train_config, write_packs
    from chemgen.generation.protocol import model_spec

    cfg = load_config(config or _checked(model_spec, model).shipped_config, model)
    refs = write_packs(_first_train_config(cfg), out, store, _versions(data), model=model)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(out.glob("*.pt")))
    console.print(f"packs of {', '.join(refs)} in {out}: {sizes}")


@train_app.command("import")
def train_import(run: Annotated[Path, typer.Argument(help="Run folder (a GPU lease's or `chemgen train MODEL`'s).")],
                 into: Annotated[Optional[Path], typer.Option(
                     callback=_folder, help="Shipped lineage to promote into (default: models/weights/<config>).")] = None,
                 store: StoreDir = None,
                 samples: Annotated[Optional[int], typer.Option(
                     help="Score the first N samples of each dataset only (the shipped checkpoint's count: "
                          "the gate compares equal contexts only).")] = None) -> None:
    """Score a training run's samples and diagnostics here, and promote its checkpoint if the gate prefers it."""
    from chemgen.generation.runs import log_run, promote_run, score_run
    from chemgen.scoring.report import print_metrics

    _at_least("--samples", samples, 1)
    scored = score_run(run, store, samples)
    decision, target = promote_run(run, scored, into)
    run_id = log_run(run, scored, decision, target)
    print_metrics(scored["scores"], console, title=f"scores of {run}")
    verdict = "[bold green]promoted[/]" if decision.promote else "[yellow]kept the shipped checkpoint[/]"
    console.print(f"{verdict} ({target}): {decision.reason}; MLflow run {run_id}")


@train_app.command("rescore")
def train_rescore(run: Annotated[Path, typer.Argument(help="The run folder that produced the shipped checkpoint.")],
                  into: Annotated[Optional[Path], typer.Option(
                      callback=_folder, help="Shipped lineage (default: models/weights/<config>).")] = None,
                  store: StoreDir = None,
                  resample: Annotated[Optional[int], typer.Option(
                      help="Draw this many new samples of the shipped checkpoint (seed 1000) into RUN and score "
                           "those: moves the lineage to a new evaluation context.")] = None,
                  sampling_steps: Annotated[Optional[int], typer.Option(
                      help="With --resample: sampling steps (default: the config's).")] = None) -> None:
    """Re-score the shipped checkpoint's samples under today's scoring (after a scoring change), so the
    gate can compare new runs with it; only the manifest's scores change. With --resample, the checkpoint
    is evaluated on new samples instead (e.g. more of them, or fewer sampling steps)."""
    from chemgen.generation.runs import rescore_shipped
    from chemgen.scoring.report import print_metrics

    _at_least("--resample", resample, 1)
    _at_least("--sampling-steps", sampling_steps, 1)
    if sampling_steps is not None and resample is None:
        raise CommandLineError("--sampling-steps draws new samples: give --resample N too")
    scored = rescore_shipped(run, store, into, resample=resample, num_steps=sampling_steps)
    print_metrics(scored["scores"], console, title=f"shipped checkpoint re-scored from {run}")


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
    out: Annotated[Path, typer.Option(callback=_folder, help="Folder for sweep.csv and sweep.png.")] = Path("sweep"),
    seed: int = 0,
    store: StoreDir = None,
) -> None:
    """Sweep sampling settings (CFG scale x steps x solver) on one model and score every cell; sweep.csv is
    rewritten after every cell and a rerun into the same --out resumes."""
    from chemgen.dense import resolve_dataset
    from chemgen.generation import runs
    from chemgen.generation.jobs import load_model
    from chemgen.generation.protocol import model_spec
    from chemgen.generation.sweep import PRIMARY, plot_sweep, sampling_sweep
    from chemgen.io import atomic_write

    dataset, kind_name = _checked(resolve_dataset, kind)
    _at_least("--n", n, 1)
    for value in steps or []:
        _at_least("--steps", value, 1)
    bad = [s for s in solver or [] if s not in ("euler", "heun")]  # the flow-matching solvers the sweep compares
    if bad:
        raise CommandLineError(f"--solver must be euler or heun, got {', '.join(bad)}")
    checkpoint = model or runs.shipped_model(_checked(model_spec, generator).name)
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


_register_model_commands()


@app.command("score")
def score(
    path: Annotated[Path, typer.Argument(help="SDF, XYZ/extXYZ, a CIF file or folder, or a CSV (cif or xyz column).")],
    kind: Annotated[str, typer.Option(help="molecule | crystal")],
    protocol: Annotated[Optional[list[str]], typer.Option(
        help="Molecules, repeatable: edm (EDM's released code), rdkit (rdDetermineBonds, RDKit's valence rules), "
             "edm_mmff (MMFF94-relaxed, then EDM; ~10 ms a molecule). Default: edm and rdkit.")] = None,
    preset: Annotated[str, typer.Option(
        help="Crystals: uniqueness/novelty rules, adit (ADiT's: 0.3/0.5/10, per unique group) or pymatgen "
             "(pymatgen's default tolerances, as FlowMM; per sample).")] = "adit",
    validity: Annotated[str, typer.Option(
        help="Crystals: cdvae (smact 2.2.1), or adit (smact 2.6, the (50, 130) degree lattice-angle rule).")] = "cdvae",
    reference: Annotated[Optional[Path], typer.Option(
        help="Novelty reference structures (default: MP-20's training split; molecules: QM9's).")] = None,
    stability: Annotated[bool, typer.Option(help="Crystals: CHGNet relaxation and E_hull (slow: ~1 s per structure).")] = False,
    out: Annotated[Path, typer.Option(callback=_folder,
                                      help="Folder for scores.json, per_sample.csv and plots.")] = Path("scores"),
    store: StoreDir = None,
) -> None:
    """Score generated structures with the reference protocols; prints a table, writes JSON, CSV and PNGs."""
    from chemgen.scoring import report

    # Every option is checked before any file is read or reference built.
    if kind not in report.KINDS:
        raise CommandLineError(f"--kind must be one of {', '.join(report.KINDS)}, got {kind!r}")
    if kind == "molecule":
        from chemgen.scoring.molecules import DEFAULT_PROTOCOLS, check_protocols, reference_smiles

        protocols = tuple(protocol or DEFAULT_PROTOCOLS)
        _checked(check_protocols, protocols)
    else:
        from chemgen.scoring.crystals import MATCHER_PRESETS

        if preset not in MATCHER_PRESETS:
            raise CommandLineError(f"--preset must be one of {', '.join(sorted(MATCHER_PRESETS))}, got {preset!r}")
        if validity not in ("cdvae", "adit"):
            raise CommandLineError(f"--validity must be cdvae or adit, got {validity!r}")
    systems, reasons = report.read_structures(path, kind)
    if kind == "molecule":
        if reference is not None:
            ref_systems = [s for s in report.read_structures(reference, "molecule")[0] if s is not None]
            references = reference_smiles(ref_systems, protocols)
        else:
            references = _optional_reference(lambda: report.qm9_reference_smiles(protocols, store))
        metrics, table, scores = report.score_systems(systems, kind, reasons, protocols=protocols, references=references)
    else:
        if reference is not None:
            references = [s for s in report.read_structures(reference, "crystal")[0] if s is not None]
        else:
            references = _optional_reference(report.training_references)
        metrics, table, scores = report.score_systems(systems, kind, reasons, preset=preset, references=references,
                                                      stability=stability, validity=validity)
    paths = report.save_report(metrics, table, scores, kind, out, context={"input": str(path)})
    report.print_metrics(metrics, console, title=f"{kind} scores: {path}")
    unreadable = sum(r is not None for r in reasons)
    if unreadable:
        console.print(f"[yellow]{unreadable} item(s) could not be read and were scored invalid (see per_sample.csv)[/]")
    console.print(f"wrote {paths['json']}, {paths['csv']} and {len(paths) - 2} plot(s)")


@app.command("elucidate")
def elucidate(
    files: Annotated[list[str], typer.Argument(
        help="One molecule's spectra: an IR and/or a Raman file, JCAMP-DX (.jdx/.dx) or two-column CSV with units "
             "in the header. Write ir:FILE or raman:FILE when the file does not say its kind.")],
    model: Annotated[Optional[str], typer.Option(
        help="DiffSpectra lineage folder or models:/NAME@ALIAS (default: the shipped models/weights/diffspectra-cpu).")] = None,
    formula: Annotated[Optional[str], typer.Option(
        help="Molecular formula, e.g. C7H8O2: fixes every sample's atom count and keeps only candidates of it.")] = None,
    samples: Annotated[int, typer.Option(help="Molecules sampled for the query.")] = 100,
    steps: Annotated[Optional[int], typer.Option(help="Ancestral sampling steps (default: the model's config).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (the same seed gives the same samples).")] = 0,
    top_k: Annotated[int, typer.Option(help="Candidates kept, best first.")] = 10,
    rerank: Annotated[bool, typer.Option(
        help="Re-rank by the similarity of each candidate's GFN2-xTB spectra to the query's (seconds a candidate).")] = True,
    out: Annotated[Path, typer.Option(callback=_folder, help="Folder for candidates.csv, candidates.sdf, "
                                                             "candidate-NN.png and query.json.")] = Path("elucidation"),
) -> None:
    """Candidate structures for a molecule's IR and/or Raman spectrum (DiffSpectra), ranked: a table here, and
    CSV, 3D SDF, one PNG per candidate overlaying the query on its computed spectrum, and a JSON summary."""
    from chemgen.elucidation import run

    _at_least("--samples", samples, 1)
    _at_least("--top-k", top_k, 1)
    _at_least("--steps", steps, 1)
    if samples > run.MAX_SAMPLES:
        raise CommandLineError(f"--samples must be at most {run.MAX_SAMPLES:,}, got {samples:,}")
    run.check_formula(formula)   # before any file is read or model loaded
    result = run.elucidate(files, model, out, formula=formula, num_samples=samples, num_steps=steps, seed=seed,
                           top_k=top_k, rerank=rerank)
    ranking = result.ranking
    table = Table(title=f"{result.name}: candidates ({', '.join(result.summary['files'])}"
                        + (f", {ranking.formula}" if ranking.formula else "") + ")", title_justify="left")
    for column in ("rank", "SMILES", "InChIKey", "count", "similarity"):
        table.add_column(column, justify="right" if column in ("rank", "count", "similarity") else "left")
    for c in ranking:
        similarity = f"{c.similarity:.3f}" if c.similarity is not None else ("failed" if c.failure else "-")
        table.add_row(str(c.rank), c.smiles, c.inchikey, str(c.count), similarity)
    if ranking:
        console.print(table)
    else:
        invalid = ", ".join(f"{n} {why}" for why, n in ranking.invalid.most_common()) or "none invalid"
        console.print(f"[yellow]no candidate among {ranking.num_samples} samples[/] ({ranking.num_valid} valid, "
                      f"{ranking.num_formula_match} of the formula; {invalid})", highlight=False)
    console.print(f"{ranking.num_valid} of {ranking.num_samples} samples valid"
                  + (f", {ranking.num_formula_match} of formula {ranking.formula}" if ranking.formula else "")
                  + f"; wrote {len(result.files)} file(s) to {out} in {result.summary['seconds']:.1f} s", highlight=False)


@app.command("serve")
def serve(host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8765,
          workers: Annotated[int, typer.Option(help="Jobs (Prefect flow runs) at once; each uses the cores torch "
                                                    "is given.")] = 1,
          samples: Annotated[int, typer.Option(help="Molecules sampled per elucidation job.")] = 100,
          rerank: Annotated[bool, typer.Option(help="Re-rank elucidation candidates by their GFN2-xTB spectra.")] = True) -> None:
    """The web app: upload spectra for ranked structures, run and browse crystal screening, see the registry."""
    import uvicorn

    from chemgen.web.app import create_app
    from chemgen.web.settings import WebSettings

    _at_least("--port", port, 1)
    _at_least("--workers", workers, 1)
    _at_least("--samples", samples, 1)
    settings = WebSettings(workers=workers, elucidation={"samples": samples, "top_k": 10, "rerank": rerank})
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]listening on {host}: the app has no authentication; put it behind one[/]")
    console.print(f"chemgen web on http://{host}:{port}  (jobs in {settings.jobs_dir})", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@flows_app.command("serve")
def flows_serve(profile: Annotated[str, typer.Option(help="Profile of the nightly retraining.")] = "nightly",
                cron: Annotated[str, typer.Option(help="Cron schedule of the nightly retraining.")] = "0 2 * * *") -> None:
    """Serve every flow from this process: nightly retraining on a schedule, screening and curation on demand."""
    from workflows.deploy import serve_all

    serve_all(profile, cron)


@flows_app.command("screen")
def flows_screen(n: int = 100, model: str = "models:/chemgen-adit@champion", seed: int = 0,
                 relax_steps: int = 200,
                 out: Annotated[Optional[Path], typer.Option(callback=_folder, help="Output folder.")] = None,
                 dask: Annotated[bool, typer.Option(help="Fan relaxations out on a local Dask cluster.")] = False,
                 dask_address: Annotated[Optional[str], typer.Option(help="Scheduler of an existing Dask cluster.")] = None) -> None:
    """Screen generated crystals: validity, S.U.N. with CHGNet relaxation and the MP-20 hull; writes CIFs, CSV, report."""
    from workflows.screen import crystal_screening, with_dask

    from chemgen.scoring.report import print_metrics

    _at_least("--n", n, 1)
    _at_least("--relax-steps", relax_steps, 0)
    flow_fn = with_dask(address=dask_address) if dask or dask_address else crystal_screening
    result = flow_fn(n=n, model=model, seed=seed, relax_steps=relax_steps, out_dir=str(out) if out else None)

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

    if version:
        v = tracking.model_version(name, version)
    else:
        tracking.require_model(name)
        v = tracking.version_by_alias(name, tracking.CHAMPION)
        if v is None:
            raise tracking.RegistryError(f"{name} has no champion yet; name a version with --version")
    console.print(f"{name} version {v.version}  aliases: {', '.join(v.aliases) or '-'}  run: {v.run_id}")
    for key, value in sorted(gates.recorded(name, v.version).items()):
        console.print(f"  gate {key} = {value:.4f}")
    console.print(f"  {v.tags.get(gates.DECISION_TAG, '')}")


@registry_app.command("promote")
def registry_promote(name: str, version: str) -> None:
    """Make a version the champion by hand (bypasses the gate)."""
    from chemgen import gates, tracking

    tracking.promote(name, version)
    console.print(f"{name} version {version} is now champion")
    if not gates.recorded(name, version):
        console.print("[yellow]it has no gate metrics: the gate holds every later challenger not scored beside it in "
                      "the same run (the nightly flow scores both)[/]")


@registry_app.command("rollback")
def registry_rollback(name: str) -> None:
    """Move champion back to the previous champion recorded in the version tags."""
    from chemgen import tracking

    previous = tracking.rollback(name)
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

"""``chemgen data``: curate datasets into the versioned store (and the QM9 spectra into theirs), and inspect them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from chemgen.data.store import StoreError
from chemgen.cli.common import CommandLineError, DataDir, StoreDir, at_least, checked, console, err_console, file_callback, folder_callback

data_app = typer.Typer(help="Curate datasets into the versioned store and inspect them.", no_args_is_help=True)


SpectraDir = Annotated[Optional[Path], typer.Option(
    "--out", callback=folder_callback, help="qm9-spectra only: the shard folder (default: $CHEMGEN_SPECTRA_DIR/qm9-xtb or the repository's "
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
        callback=file_callback, help="qm9-spectra only: write the uncomputed molecules in [--start, --limit) as a jobs file for "
             "`python -m chemgen.spectra.offload` on another machine, instead of computing them.")] = None,
    start: Annotated[int, typer.Option(help="qm9-spectra --export-jobs: first order position to export.")] = 0,
    import_shards: Annotated[Optional[Path], typer.Option(
        help="qm9-spectra only: add the shards of a spectra-shards.tar made by chemgen.spectra.offload.")] = None,
    shard_size: Annotated[int, typer.Option(
        help="qm9-spectra only: molecules per shard (smaller ones lose less at a deadline or a kill).")] = 500,
    force: Annotated[bool, typer.Option(help="Curate again even if this input was curated before.")] = False,
) -> None:
    """Curate one dataset into a new version of the store (a no-op when the input is unchanged)."""
    from chemgen.datasets import DATASETS, curation_recipe
    from chemgen.data.store import curate
    from chemgen.data.describe import print_curation

    at_least("--workers", workers, 1)
    at_least("--limit", limit, 0)
    if name == "qm9-spectra":
        if export_jobs or import_shards:
            return _spectra_transfer(export_jobs, import_shards, start, limit, out)
        return _prepare_spectra(workers, limit, until, out, shard_size)
    if name not in DATASETS:
        raise CommandLineError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)}, qm9-spectra)")
    print_curation(curate(curation_recipe(name, data_dir=data_dir, workers=workers, limit=limit), root=store,
                          force=force), console)


def _spectra_transfer(export_path: Path | None, archive: Path | None, start: int, limit: int | None,
                      out: Path | None) -> None:
    from chemgen.spectra import curation as spectra
    from chemgen.spectra import offload as remote

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
    from chemgen.spectra.curation import curate_spectra, parse_until
    from chemgen.spectra.store_report import print_spectra_manifest

    checked(parse_until, until)  # a malformed --until fails before the lock and the shard scan
    at_least("--shard-size", shard_size, 1)
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
    plot: Annotated[Optional[Path], typer.Option(callback=folder_callback, help="Folder for PNG plots of the element and size histograms.")] = None,
    verify: Annotated[bool, typer.Option(help="Recompute every shard's content hash.")] = False,
    out: SpectraDir = None,
) -> None:
    """Counts, splits, content hashes and the element histogram of curated datasets."""
    from chemgen.data.store import list_datasets, read_manifest
    from chemgen.data.store import verify as verify_shards
    from chemgen.data.describe import plot_dataset, print_manifest

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
    from chemgen.spectra.curation import default_folder
    from chemgen.spectra import shards
    from chemgen.spectra.store_report import plot_spectra_dataset, print_scale_fit, print_spectra_manifest

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

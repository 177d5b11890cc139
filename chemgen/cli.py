"""The ``chemgen`` command. Each command parses its options and calls one library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from chemgen.atoms import InvalidSystemError
from chemgen.data.store import StoreError
from chemgen.io import StructureFileError

app = typer.Typer(help="chemgen: curated data, generative models and reference-exact scoring for molecules and crystals.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Curate datasets into the versioned store and inspect them.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

# Errors a user can fix: shown as one clear line and a non-zero exit, never a traceback.
USER_ERRORS = (StructureFileError, StoreError, InvalidSystemError, FileNotFoundError, KeyError, ValueError)


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
    store: StoreDir = None,
    data_dir: DataDir = None,
    profile: Annotated[str, typer.Option(help="demo: small slices that finish in minutes; full: every row.")] = "demo",
) -> None:
    """The main job: curate QM9 and MP-20, then print a summary of the store."""
    from chemgen.pipeline import run_main

    try:
        run_main(profile=profile, store=store, data_dir=data_dir, console=console)
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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

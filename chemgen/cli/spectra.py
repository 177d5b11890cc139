"""``chemgen spectra``: GFN2-xTB IR and Raman spectra of your own molecules, and spectrum files read as the models read them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from chemgen.cli.common import CommandLineError, USER_ERRORS, console, err_console, folder_callback, message

spectra_app = typer.Typer(help="Vibrational spectra: xTB IR/Raman of your molecules; spectrum files.", no_args_is_help=True)


@spectra_app.command("compute")
def spectra_compute(
    molecules: Annotated[Optional[list[Path]], typer.Argument(help="SDF, XYZ/extXYZ or .smi files.")] = None,
    out: Annotated[Path, typer.Option("--out", callback=folder_callback,
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
    out: Annotated[Path, typer.Option("--out", callback=folder_callback,
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
            err_console.print(f"[bold red]error:[/] {escape(message(err))}", soft_wrap=True, highlight=False)
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


library_app = typer.Typer(help="Your own libraries of computed spectra, searched by `chemgen elucidate`.",
                          no_args_is_help=True)
spectra_app.add_typer(library_app, name="library")


@library_app.command("add")
def library_add(
    name: Annotated[str, typer.Argument(help="The library's name (a folder under $CHEMGEN_HOME/libraries).")],
    molecules: Annotated[Optional[Path], typer.Argument(
        help="A SMILES file (one per line, an optional name after it) or a structure file (SDF, XYZ).")] = None,
    smiles: Annotated[Optional[list[str]], typer.Option("--smiles", help="A SMILES to add (repeatable).")] = None,
) -> None:
    """Compute the GFN2-xTB spectra of your candidate molecules into a library of your own (only those it does not
    hold yet; a stopped run goes on where it stopped). Each line that cannot be computed is listed with its
    reason."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from chemgen.spectra.user_library import add_candidates, read_lines

    if molecules is None and not smiles:
        raise CommandLineError("give a file of molecules or --smiles")
    with Progress(TextColumn("xTB spectra"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("", total=None)
        report = add_candidates(name, molecules, list(smiles or []),
                                progress=lambda done, total, what: bar.update(task, completed=done, total=total,
                                                                                description=escape(what)))
    for line in read_lines(report.library):
        if line["status"] != "ok":
            err_console.print(f"[yellow]line {line['line']} ({escape(line['name'])}): {escape(line['status'])}[/]",
                              highlight=False)
    console.print(f"{name}: {report.computed} computed, {report.failed} could not be, {report.skipped} already there, "
                  f"of {report.read} given, in {report.seconds:.0f} s; library {report.library}", highlight=False)


@library_app.command("list")
def library_list() -> None:
    """Your libraries, with how many molecules have spectra."""
    from chemgen.elucidation.pooling import user_libraries, user_library_root
    from chemgen.spectra import shards

    folders = user_libraries()
    if not folders:
        console.print(f"no libraries under {user_library_root()} (`chemgen spectra library add NAME FILE`)")
        return
    for folder in folders:
        infos = shards.scan(folder)
        console.print(f"{folder.name}: {sum(i.ok for i in infos):,} molecules with spectra, "
                      f"{sum(i.failed for i in infos):,} failed ({folder})", highlight=False)

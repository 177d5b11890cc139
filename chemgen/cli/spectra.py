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

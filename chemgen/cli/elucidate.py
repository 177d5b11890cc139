"""``chemgen elucidate``: candidate structures for one molecule's IR and/or Raman spectrum, from every source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from chemgen.cli.common import CommandLineError, at_least, checked, console, err_console, folder_callback


def elucidate(
    files: Annotated[list[str], typer.Argument(
        help="One molecule's spectra: an IR and/or a Raman file, JCAMP-DX (.jdx/.dx) or two-column CSV with units "
             "in the header, measured (transmittance, absorbance, absorption coefficients) or computed. Write "
             "ir:FILE or raman:FILE when the file does not say its kind.")],
    sources: Annotated[Optional[str], typer.Option(
        help="Where candidates come from, comma-separated: library (computed spectra of QM9's molecules), user "
             "(your own libraries: `chemgen spectra library add`), model (DiffSpectra's samples). Default: every "
             "source that exists.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="DiffSpectra lineage folder or models:/NAME@ALIAS (default: the shipped models/weights/diffspectra-cpu).")] = None,
    formula: Annotated[Optional[str], typer.Option(
        help="Molecular formula, e.g. C4H8O2: every source keeps only molecules of it (and DiffSpectra samples its "
             "atom count).")] = None,
    samples: Annotated[int, typer.Option(help="Molecules DiffSpectra samples for the query.")] = 32,
    steps: Annotated[int, typer.Option(help="Ancestral sampling steps (the reference's 1,000 take ten times as "
                                             "long as the default).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (the same seed gives the same samples).")] = 0,
    top_k: Annotated[int, typer.Option(help="Candidates kept, best first.")] = 10,
    rerank: Annotated[bool, typer.Option(
        help="Compute GFN2-xTB spectra of DiffSpectra's candidates (seconds each) so that they are scored like the "
             "library's; without, they follow the scored candidates by sample count.")] = True,
    out: Annotated[Path, typer.Option(callback=folder_callback, help="Folder for candidates.csv, candidates.sdf, "
                                                             "candidate-NN.png and query.json.")] = Path("elucidation"),
) -> None:
    """Candidate structures for a molecule's IR and/or Raman spectrum, pooled from the computed-spectra library,
    your own libraries and DiffSpectra, each scored against the spectrum the same way; a table and how sure the
    answer is here, and CSV, 3D SDF, one PNG per candidate overlaying the spectrum on its computed one, and a
    JSON summary."""
    from chemgen.elucidation import run
    from chemgen.elucidation.pooling import parse_sources

    at_least("--samples", samples, 1)
    at_least("--top-k", top_k, 1)
    at_least("--steps", steps, 1)
    if samples > run.MAX_SAMPLES:
        raise CommandLineError(f"--samples must be at most {run.MAX_SAMPLES:,}, got {samples:,}")
    chosen = checked(parse_sources, sources)
    run.check_formula(formula)   # before any file is read or model loaded
    with console.status("elucidating") as status:
        result = run.elucidate(files, model, out, formula=formula, sources=chosen, num_samples=samples,
                               num_steps=steps, seed=seed, top_k=top_k, rerank=rerank,
                               log=lambda line: status.update(escape(line)))
    ranking = result.ranking
    for report in result.reports:
        if report.searched:
            console.print(f"searched [bold]{report.source}[/]: {escape(report.detail)}; {report.candidates} "
                          f"candidate(s) in {report.seconds:.1f} s", highlight=False)
        else:
            err_console.print(f"[yellow]not searched {report.source}: {escape(report.detail)}[/]", highlight=False)
    if ranking.formula and result.summary["isomers_in_library"]:
        console.print("isomers of " + ranking.formula + ": " + ", ".join(
            f"{n:,} in {source}" for source, n in result.summary["isomers_in_library"].items()), highlight=False)
    table = Table(title=f"{result.name}: candidates ({', '.join(result.summary['files'])}"
                        + (f", {ranking.formula}" if ranking.formula else "") + ")", title_justify="left")
    for column in ("rank", "SMILES", "sources", "similarity", "IR", "Raman", "sampled"):
        table.add_column(column, justify="left" if column in ("SMILES", "sources") else "right")
    for c in ranking:
        similarity = f"{c.similarity:.3f}" if c.similarity is not None else ("failed" if c.failure else "-")
        table.add_row(str(c.rank), c.smiles, ", ".join(c.sources), similarity,
                      *(f"{c.similarities[k]:.3f}" if k in c.similarities else "-" for k in ("ir", "raman")),
                      str(c.count) if c.count else "-")
    if ranking:
        console.print(table)
        colour = "green" if result.confidence.confident else "yellow"
        console.print(f"[{colour}]{escape(result.confidence.statement)}[/]", highlight=False)
    else:
        console.print("[yellow]no candidate from any source[/]", highlight=False)
    if ranking.num_samples:
        console.print(f"DiffSpectra: {ranking.num_valid} of {ranking.num_samples} samples valid"
                      + (f", {ranking.num_formula_match} of formula {ranking.formula}" if ranking.formula else ""),
                      highlight=False)
    console.print(f"wrote {len(result.files)} file(s) to {out} in {result.summary['seconds']:.1f} s", highlight=False)

"""``chemgen elucidate``: candidate structures for one molecule's IR and/or Raman spectrum."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from chemgen.cli.common import CommandLineError, at_least, console, folder_callback


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
    out: Annotated[Path, typer.Option(callback=folder_callback, help="Folder for candidates.csv, candidates.sdf, "
                                                             "candidate-NN.png and query.json.")] = Path("elucidation"),
) -> None:
    """Candidate structures for a molecule's IR and/or Raman spectrum (DiffSpectra), ranked: a table here, and
    CSV, 3D SDF, one PNG per candidate overlaying the query on its computed spectrum, and a JSON summary."""
    from chemgen.elucidation import run

    at_least("--samples", samples, 1)
    at_least("--top-k", top_k, 1)
    at_least("--steps", steps, 1)
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

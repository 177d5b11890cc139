"""One query's structure elucidation, from its uploaded spectrum files to ranked candidates on disk.

What `chemgen elucidate`, the ``elucidate`` flow and the web app call::

    files (JCAMP-DX or CSV: one IR and/or one Raman spectrum of one molecule)
      -> read_query          units normalised, resampled onto the 500-4,000 cm^-1 grid, checked
      -> pool                every source (`chemgen.elucidation.pooling`): the computed-spectra library, the
                             chemist's own libraries, DiffSpectra's samples (`elucidate_spectra`, their
                             GFN2-xTB spectra computed); one comparison scores them all; a formula restricts all
      -> assess              how sure the answer is (`chemgen.elucidation.confidence`)
      -> write_candidates    candidates.csv, candidates.sdf, candidate-NN.png; then query.json (the summary)

Everything a user can get wrong is checked before the model is loaded or anything is written: the options,
the formula (DiffSpectra's elements are QM9's H, C, N, O, F; at most 29 atoms) and every file (each problem
raises `chemgen.spectra.files.SpectrumFileError` naming the file). A file's kind comes from the file (JCAMP-DX
``##DATA TYPE``, a CSV header naming Raman or absorbance) or from a ``ir:`` / ``raman:`` prefix on its name.

The spectra reach the model as read: DiffSpectra learnt GFN2-xTB spectra in km/mol per cm^-1 (IR) and
A^4/amu per cm^-1 (Raman), Lorentzian FWHM 15 cm^-1, as `chemgen spectra compute` writes them; a measured
spectrum in absorbance is on another scale, which the model was never shown. The comparison that scores every
candidate is built for measured spectra (`chemgen.elucidation.comparison`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.elucidation.generator import (DEFAULT_SAMPLES, DEFAULT_STEPS, DEFAULT_TOP_K, MAX_SAMPLES, NoTrainedModelError,  # noqa: F401 (this module's API too)
                                           check_formula, check_settings, default_model, elucidate_spectra,
                                           load_elucidator)
from chemgen.elucidation.ranking import Ranking
from chemgen.errors import UsageError
from chemgen.spectra.broadening import GRID_CM1
from chemgen.spectra.files import KINDS, SpectrumFileError, read_spectrum, resample

QUERY_KINDS = ("ir", "raman")        # what DiffSpectra conditions on
LABELS = {"ir": "IR", "raman": "Raman", "uv-vis": "UV-Vis"}
SUMMARY_FILE = "query.json"


@dataclass(frozen=True)
class QueryFile:
    """One uploaded file and the kind the user said it is (None: read from the file)."""

    path: Path
    kind: str | None = None


@dataclass(frozen=True)
class Query:
    """One molecule's spectra on the model grid: {kind: (values, covered mask)}, and the file of each."""

    spectra: dict[str, tuple[np.ndarray, np.ndarray]]
    files: dict[str, Path]


@dataclass
class Elucidation:
    """The outcome of `elucidate`: the pooled, ranked candidates (with the generator's sample counts), the files,
    how sure the answer is, and what each source did."""

    name: str
    ranking: Ranking
    out_dir: Path
    files: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)
    confidence: Any = None
    reports: list[Any] = field(default_factory=list)


# ---------------------------------------------------------------------------- checks
def parse_file_argument(text: str | os.PathLike | QueryFile) -> QueryFile:
    """``ir:spectrum.csv`` -> QueryFile(spectrum.csv, "ir"); a plain path keeps kind None (read from the file).
    A prefix counts only when it is a spectrum kind and the text is not itself an existing file."""
    if isinstance(text, QueryFile):
        return text
    text = os.fspath(text)
    prefix, sep, rest = text.partition(":")
    if sep and rest and prefix.lower() in KINDS and not Path(text).exists():
        return QueryFile(Path(rest), prefix.lower())
    return QueryFile(Path(text))


def read_query(files: Sequence[str | os.PathLike | QueryFile], kinds: Sequence[str] = QUERY_KINDS) -> Query:
    """One molecule's spectra from its files: at most one file per kind, each a ``kinds`` spectrum with some
    positive signal on the grid. Raises `SpectrumFileError` naming the file and the problem."""
    if not files:
        raise UsageError(f"no spectrum files: give one molecule's {' and/or '.join(LABELS[k] for k in kinds)} "
                         "spectrum (JCAMP-DX or CSV)")
    spectra: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    paths: dict[str, Path] = {}
    for item in map(parse_file_argument, files):
        spectrum = read_spectrum(item.path, kind=item.kind)
        if spectrum.kind not in kinds:
            raise SpectrumFileError(f"{item.path}: a {LABELS[spectrum.kind]} spectrum; DiffSpectra reads "
                                    f"{' and '.join(LABELS[k] for k in kinds)} spectra only")
        if spectrum.kind in paths:
            raise SpectrumFileError(f"{item.path}: a second {LABELS[spectrum.kind]} spectrum for this query (the "
                                    f"first is {paths[spectrum.kind]}); give one file per kind, one molecule per query")
        values, covered = resample(spectrum)
        if not (values[covered] > 0).any():   # the model reads log10(1 + x) of x >= 0: nothing would remain
            raise SpectrumFileError(f"{item.path}: no positive {LABELS[spectrum.kind]} signal between "
                                    f"{GRID_CM1[0]:.0f} and {GRID_CM1[-1]:.0f} cm^-1")
        if np.ptp(values[covered]) <= 1e-9 * float(np.abs(values[covered]).max()):
            raise SpectrumFileError(f"{item.path}: a flat {LABELS[spectrum.kind]} spectrum (every value "
                                    f"{values[covered][0]:g}): no band to compare")
        spectra[spectrum.kind], paths[spectrum.kind] = (values, covered), item.path
    return Query(spectra, paths)


def _model_label(model: Any) -> str:
    if model is None:
        return str(default_model())
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


# ---------------------------------------------------------------------------- one query, end to end
def query_name(files: Sequence[str | os.PathLike | QueryFile]) -> str:
    """A query's default name: its first file's name up to the first dot (``acetylene.ir.jdx`` -> acetylene)."""
    first = parse_file_argument(files[0]).path.name if files else ""
    return first.split(".")[0] or "query"


def elucidate(files: Sequence[str | os.PathLike | QueryFile], model: Any = None,
              out_dir: str | os.PathLike = "elucidation", *, formula: str | None = None,
              sources: Sequence[str] | str | None = None, num_samples: int = DEFAULT_SAMPLES,
              num_steps: int | None = DEFAULT_STEPS, seed: int | None = 0, top_k: int | None = DEFAULT_TOP_K,
              rerank: bool = True, name: str | None = None, sticks_fn: Any = None,
              library_folder: str | os.PathLike | None = None, user_roots: Sequence[str | os.PathLike] | None = None,
              log: Any = None) -> Elucidation:
    """Candidates for the molecule whose spectra ``files`` hold, pooled from every source and written into
    ``out_dir`` (module docstring; `chemgen.elucidation.pooling`).

    ``sources``: a subset of library, user, model (a list or "library,model"; None: every source that exists).
    ``model``: a lineage folder, a ``models:/NAME@ALIAS`` URI, a loaded DiffSpectra, or None (the shipped
    lineage). ``rerank`` computes the spectra of the generator's candidates (``sticks_fn``, default GFN2-xTB)
    so that they are scored like the library's; without it they follow the scored ones, by sample count.
    """
    from chemgen.elucidation.confidence import assess
    from chemgen.elucidation.outputs import write_candidates
    from chemgen.elucidation.pooling import materialise, parse_sources, pool, xtb_sticks
    from chemgen.io import atomic_write

    start = time.perf_counter()
    check_settings(num_samples, top_k, num_steps, seed)
    wanted = check_formula(formula)
    chosen = parse_sources(sources)
    query = read_query(files)
    name = name or query_name(files)

    def no_spectra(mol: Any) -> Any:
        raise UsageError("not compared: re-ranking by computed spectra is off")

    pooled = pool(query.spectra, chosen, formula=formula, top_k=top_k or DEFAULT_TOP_K, model=model,
                  model_options={"num_samples": num_samples, "num_steps": num_steps, "seed": seed},
                  sticks_fn=(sticks_fn or xtb_sticks) if rerank else no_spectra, library_folder=library_folder,
                  user_roots=user_roots, log=log or (lambda line: None))
    candidates = [materialise(c, pooled.folders) for c in pooled.candidates]
    sampled = pooled.model_ranking
    ranking = Ranking(candidates, sampled.num_samples if sampled is not None else 0,
                      sampled.num_valid if sampled is not None else 0,
                      sampled.num_formula_match if sampled is not None else 0, pooled.formula,
                      sampled.invalid if sampled is not None else None)
    confidence = assess(ranking, formula=pooled.formula is not None)
    out_dir = Path(out_dir)
    written = write_candidates(out_dir, name, ranking, query.spectra)
    summary = {
        "name": name, "files": {k: str(p) for k, p in query.files.items()},
        "sources": [{"source": r.source, "searched": r.searched, "detail": r.detail, "candidates": r.candidates,
                     "seconds": round(r.seconds, 2)} for r in pooled.reports],
        "model": _model_label(model) if any(r.source == "model" and r.searched for r in pooled.reports) else None,
        "formula": None if wanted is None else wanted[0], "num_atoms": None if wanted is None else wanted[1],
        "isomers_in_library": pooled.isomers,
        "num_samples": num_samples if sampled is not None else 0, "num_steps": num_steps, "seed": seed,
        "top_k": top_k, "reranked": bool(rerank), "num_valid": ranking.num_valid,
        "num_formula_match": ranking.num_formula_match, "invalid": dict(ranking.invalid),
        "confidence": confidence.as_dict(),
        "candidates": [{"rank": c.rank, "smiles": c.smiles, "inchikey": c.inchikey, "sources": list(c.sources),
                        "count": c.count, "fraction": c.fraction, "similarity": c.similarity,
                        "similarities": dict(c.similarities), "formula": c.formula, "formula_match": c.formula_match,
                        "failure": c.failure}
                       for c in ranking],
        "seconds": round(time.perf_counter() - start, 2)}
    with atomic_write(out_dir / SUMMARY_FILE) as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")
    return Elucidation(name, ranking, out_dir, [*written, out_dir / SUMMARY_FILE], summary, confidence, pooled.reports)

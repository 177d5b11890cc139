"""One query's structure elucidation, from its uploaded spectrum files to ranked candidates on disk.

What `chemgen elucidate`, the ``elucidate`` flow and the registry pyfunc call::

    files (JCAMP-DX or CSV: one IR and/or one Raman spectrum of one molecule)
      -> read_query          units normalised, resampled onto the model's 500-4,000 cm^-1 grid, checked
      -> elucidate_spectra   DiffSpectra samples molecules for the spectra (the formula fixes the atom count),
                             rank_candidates groups, counts and filters them by the formula
      -> rerank              optional: GFN2-xTB spectra of each candidate compared with the query's
      -> write_candidates    candidates.csv, candidates.sdf, candidate-NN.png; then query.json (the summary)

Everything a user can get wrong is checked before the model is loaded or anything is written: the options,
the formula (DiffSpectra's elements are QM9's H, C, N, O, F; at most 29 atoms) and every file (each problem
raises `chemgen.spectra.files.SpectrumFileError` naming the file). A file's kind comes from the file (JCAMP-DX
``##DATA TYPE``, a CSV header naming Raman or absorbance) or from a ``ir:`` / ``raman:`` prefix on its name.

The spectra reach the model as read: DiffSpectra learnt GFN2-xTB spectra in km/mol per cm^-1 (IR) and
A^4/amu per cm^-1 (Raman), Lorentzian FWHM 15 cm^-1, as `chemgen spectra compute` writes them; a measured
spectrum in absorbance is on another scale, which the model was never shown.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.elucidation.identity import hill_formula, parse_formula
from chemgen.elucidation.ranking import Ranking, rank_candidates
from chemgen.errors import ChemgenError, UsageError
from chemgen.spectra.broadening import GRID_CM1
from chemgen.spectra.files import KINDS, SpectrumFileError, read_spectrum, resample

QUERY_KINDS = ("ir", "raman")        # what DiffSpectra conditions on
LABELS = {"ir": "IR", "raman": "Raman", "uv-vis": "UV-Vis"}
DEFAULT_SAMPLES = 100
DEFAULT_TOP_K = 10
MAX_SAMPLES = 10_000                 # per query: beyond this a CPU run takes days
SUMMARY_FILE = "query.json"


class NoTrainedModelError(ChemgenError, FileNotFoundError):
    """No model was named and no trained DiffSpectra ships with this checkout."""


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
    """The outcome of `elucidate`: the ranked candidates (with the query's sample counts) and the files."""

    name: str
    ranking: Ranking
    out_dir: Path
    files: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)


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


def check_formula(formula: str | None) -> tuple[str, int] | None:
    """(Hill formula, number of atoms) of a molecular formula DiffSpectra can sample, or None for None.

    Raises `UsageError` for a formula `parse_formula` refuses, an element outside QM9's H, C, N, O, F, or more
    atoms than QM9's largest molecule."""
    from chemgen.atoms import SYMBOLS
    from chemgen.models.diffspectra.data import MAX_ATOMS
    from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS

    if formula is None:
        return None
    counts = parse_formula(formula)
    allowed = [SYMBOLS[z] for z in ATOM_ELEMENTS]
    other = sorted(set(counts) - set(allowed))
    if other:
        raise UsageError(f"molecular formula {formula!r}: DiffSpectra's molecules are made of {', '.join(allowed)} "
                         f"(QM9's elements), not {', '.join(other)}")
    atoms = sum(counts.values())
    if atoms > MAX_ATOMS:
        raise UsageError(f"molecular formula {formula!r} has {atoms} atoms; DiffSpectra samples at most {MAX_ATOMS} "
                         "(QM9's largest molecule)")
    return hill_formula(counts), atoms


def check_settings(num_samples: int, top_k: int | None, num_steps: int | None, seed: int | None) -> None:
    """The sampling options, or `UsageError` naming the one that is wrong."""
    for name, value, low, optional in (("num_samples", num_samples, 1, False), ("top_k", top_k, 1, True),
                                       ("num_steps", num_steps, 1, True), ("seed", seed, 0, True)):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UsageError(f"{name} must be a whole number >= {low}, got {value!r}")
    if num_samples > MAX_SAMPLES:
        raise UsageError(f"num_samples must be at most {MAX_SAMPLES:,} per query, got {num_samples:,}")


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


# ---------------------------------------------------------------------------- model
def default_model() -> Path:
    """The shipped DiffSpectra lineage (``models/weights/diffspectra-cpu``), or `NoTrainedModelError` saying how
    to get one."""
    from chemgen import lineage
    from chemgen.models.specs import model_spec
    from chemgen.lineage import shipped_lineage

    spec = model_spec("diffspectra")
    folder = shipped_lineage(spec.shipped_config)
    if not lineage.is_lineage(folder):
        raise NoTrainedModelError(
            f"no trained DiffSpectra at {folder}: train one with `chemgen train diffspectra --config cpu --steps "
            "specformer=5000,denoiser=20000 --out RUN` and pass --model RUN/lineage (or a registered "
            f"models:/{spec.registered_name}@ALIAS)")
    return folder


def load_elucidator(model: Any = None) -> Any:
    """A DiffSpectra from a lineage folder, a registry URI, an already loaded model, or (None) the shipped one."""
    from chemgen.models.loading import load_model

    if model is None:
        model = default_model()
    loaded = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if not callable(getattr(loaded, "elucidate", None)):
        what = getattr(getattr(loaded, "config", None), "name", type(loaded).__name__)
        raise UsageError(f"{model}: a {what} model, which samples no molecules for spectra; elucidation needs a "
                         "DiffSpectra lineage")
    return loaded


def elucidate_spectra(model: Any, spectra: Mapping[str, Any], formula: str | None = None,
                      num_samples: int = DEFAULT_SAMPLES, num_steps: int | None = None, seed: int | None = 0,
                      top_k: int | None = DEFAULT_TOP_K) -> Ranking:
    """Sample ``num_samples`` molecules for one query's spectra ({kind: values or (values, covered)} on
    `GRID_CM1`) and rank them (`rank_candidates`); a formula fixes each sample's atom count and filters."""
    import torch

    from chemgen.elucidation.rerank import query_arrays

    check_settings(num_samples, top_k, num_steps, seed)
    wanted = check_formula(formula)
    arrays = query_arrays(spectra)   # shape and finiteness, per kind
    modalities = tuple(model.config.specformer.modalities)
    unused = sorted(set(arrays) - set(modalities))
    if unused:
        raise UsageError(f"this DiffSpectra reads {', '.join(modalities)} spectra, not {', '.join(unused)}")
    tensors = {m: torch.as_tensor(arrays[m][0], dtype=torch.float32)[None] if m in arrays else None
               for m in modalities}
    present = torch.tensor([[m in arrays for m in modalities]])
    num_atoms = None if wanted is None else torch.tensor([wanted[1]])
    samples = model.elucidate(tensors, present, num_samples=int(num_samples), num_atoms=num_atoms,
                              num_steps=num_steps, seed=seed)[0]
    return rank_candidates(samples, None if wanted is None else wanted[0], top_k)


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
              num_samples: int = DEFAULT_SAMPLES, num_steps: int | None = None, seed: int | None = 0,
              top_k: int | None = DEFAULT_TOP_K, rerank: bool = True, name: str | None = None,
              compute_fn: Any = None, rule: str = "similarity") -> Elucidation:
    """Candidates for the molecule whose spectra ``files`` hold, written into ``out_dir`` (module docstring).

    ``model``: a lineage folder, a ``models:/NAME@ALIAS`` URI, a loaded DiffSpectra, or None (the shipped
    lineage). ``rerank`` computes each candidate's spectra (``compute_fn``, default GFN2-xTB,
    `chemgen.elucidation.rerank.computed_spectra`) and orders by similarity to the query (``rule``).
    """
    from chemgen.elucidation.outputs import write_candidates
    from chemgen.elucidation.rerank import RERANK_RULES, computed_spectra
    from chemgen.elucidation.rerank import rerank as rerank_by_spectra
    from chemgen.io import atomic_write

    start = time.perf_counter()
    check_settings(num_samples, top_k, num_steps, seed)
    wanted = check_formula(formula)
    if rerank and rule not in RERANK_RULES:
        raise UsageError(f"unknown re-rank rule {rule!r} (known: {', '.join(RERANK_RULES)})")
    query = read_query(files)
    name = name or query_name(files)
    elucidator = load_elucidator(model)
    ranking = elucidate_spectra(elucidator, query.spectra, formula, num_samples, num_steps, seed, top_k)
    if rerank and ranking:
        ranking = rerank_by_spectra(ranking, query.spectra, compute_fn or computed_spectra, rule)
    out_dir = Path(out_dir)
    written = write_candidates(out_dir, name, ranking, query.spectra)
    summary = {
        "name": name, "files": {k: str(p) for k, p in query.files.items()},
        "model": _model_label(model),
        "formula": None if wanted is None else wanted[0], "num_atoms": None if wanted is None else wanted[1],
        "num_samples": num_samples, "num_steps": num_steps or elucidator.config.diffusion.num_steps, "seed": seed,
        "top_k": top_k, "reranked": bool(rerank and ranking), "num_valid": ranking.num_valid,
        "num_formula_match": ranking.num_formula_match, "invalid": dict(ranking.invalid),
        "candidates": [{"rank": c.rank, "smiles": c.smiles, "inchikey": c.inchikey, "count": c.count,
                        "fraction": c.fraction, "similarity": c.similarity, "failure": c.failure}
                       for c in ranking],
        "seconds": round(time.perf_counter() - start, 2)}
    with atomic_write(out_dir / SUMMARY_FILE) as handle:
        json.dump(summary, handle, indent=1)
        handle.write("\n")
    return Elucidation(name, ranking, out_dir, [*written, out_dir / SUMMARY_FILE], summary)

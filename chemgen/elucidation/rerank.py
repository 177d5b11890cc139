"""Check candidates against the query's spectra: compute each candidate's spectra, compare, re-rank.

Similarity (`spectral_similarity`): the cosine of the query's and the candidate's broadened spectra on
the common grid (`GRID_CM1`, 500-4,000 cm^-1), per modality, then the mean over the modalities the query
has. Cosine because it ignores scale: an uploaded IR spectrum in absorbance and a computed one in km/mol,
or Raman activities on any scale, compare as shapes; and it is the spectral-library search standard. The
15 cm^-1 Lorentzians make it tolerate small frequency shifts; it stays a strict measure (xTB against
experiment rarely passes 0.9). A query modality may be given as values, or as ``(values, covered)`` as
`chemgen.spectra.files.resample` returns it: then only the covered part of the grid is compared, so an
uploaded spectrum's missing range does not count against any candidate. A modality where either spectrum
is all zero scores 0. The query's ``uv-vis`` is ignored here (xTB gives no UV-Vis); IR and Raman compare.

Re-ranking (`rerank`), ``rule``:

``"similarity"`` (default)
    score = similarity; ties by count, then InChIKey. The sampler's top-10 holds the right structure far
    more often than its top-1 (DiffSpectra v2: 99.5 % against 40.8 % on QM9S), so the sample count is a
    good filter but a weak order; a physics check of each candidate against the measured spectrum is the
    better order, and the count only breaks ties.
``"product"``
    score = max(similarity, 0) x fraction: trusts the sampler's frequencies as much as the spectra, for
    queries whose spectra xTB reproduces poorly (experimental spectra, strong anharmonicity).

A candidate whose spectra cannot be computed (xTB fails, the compute function raises, the spectra do not
fit the grid) keeps its failure reason and goes below every scored candidate, in its previous order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from rdkit import Chem

from chemgen.elucidation.ranking import Candidate, Ranking
from chemgen.errors import ChemgenError, UsageError
from chemgen.spectra.broadening import FWHM_CM1, GRID_CM1, broaden

COMPARED_KINDS = ("ir", "raman")     # what xTB computes and the grid holds
IGNORED_KINDS = ("uv-vis",)          # a query may carry them for the model; nothing here computes them
RERANK_RULES = ("similarity", "product")

Spectra = Mapping[str, np.ndarray]
QuerySpectra = Mapping[str, "np.ndarray | tuple[np.ndarray, np.ndarray]"]
ComputeFn = Callable[[Chem.Mol], Spectra]


def _grid_array(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != GRID_CM1.shape:
        raise UsageError(f"{what} has shape {array.shape}; spectra are compared on the {GRID_CM1.size}-point "
                         f"grid {GRID_CM1[0]:.0f}-{GRID_CM1[-1]:.0f} cm^-1 (resample first)")
    if not np.isfinite(array).all():
        raise UsageError(f"{what} holds NaN or infinite values")
    return array


def query_arrays(query: QuerySpectra) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The query's comparable modalities as ``{kind: (values, covered mask)}``, checked."""
    unknown = sorted(set(query) - set(COMPARED_KINDS) - set(IGNORED_KINDS))
    if unknown:
        raise UsageError(f"unknown spectrum kind(s) {unknown} in the query (known: {', '.join(COMPARED_KINDS)}"
                         f", and {', '.join(IGNORED_KINDS)} which is not compared)")
    arrays = {}
    for kind in COMPARED_KINDS:
        if kind not in query:
            continue
        given = query[kind]
        values, covered = given if isinstance(given, tuple) else (given, np.ones(GRID_CM1.shape, dtype=bool))
        covered = np.asarray(covered, dtype=bool)
        if covered.shape != GRID_CM1.shape:
            raise UsageError(f"the query's {kind} coverage mask has shape {covered.shape}, not {GRID_CM1.shape}")
        arrays[kind] = (_grid_array(values, f"the query's {kind} spectrum"), covered)
    if not arrays:
        raise UsageError(f"the query has no spectrum to compare (needs one of {', '.join(COMPARED_KINDS)}; "
                         f"it has {', '.join(sorted(query)) or 'none'})")
    return arrays


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two spectra; 0 when either is all zero."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if norm == 0.0 else float(np.clip(np.dot(a, b) / norm, -1.0, 1.0))


def modality_similarities(query: QuerySpectra, computed: Spectra) -> dict[str, float]:
    """``{kind: cosine}`` for every comparable modality of the query, on the query's covered grid points.

    Raises `UsageError` when ``computed`` lacks one of them or does not fit the grid."""
    result = {}
    for kind, (values, covered) in query_arrays(query).items():
        if kind not in computed or computed[kind] is None:
            raise UsageError(f"no computed {kind} spectrum to compare with the query's")
        other = _grid_array(computed[kind], f"the computed {kind} spectrum")
        result[kind] = cosine(values[covered], other[covered])
    return result


def spectral_similarity(query: QuerySpectra, computed: Spectra) -> float:
    """Mean over the query's modalities of the cosine similarity (module docstring); in [-1, 1], 1 when
    the shapes are identical."""
    similarities = modality_similarities(query, computed)
    return float(np.mean(list(similarities.values())))


def computed_spectra(mol: Chem.Mol, settings=None, fwhm: float = FWHM_CM1) -> dict[str, np.ndarray]:
    """Production compute function: relax the candidate with GFN2-xTB from its 3D coordinates
    (`chemgen.spectra.compute.compute_spectrum`) and broaden its IR and Raman sticks onto `GRID_CM1`, as
    the spectra store is broadened (frequencies scaled to B3LYP, Lorentzian FWHM 15 cm^-1). Seconds per
    small molecule. Raises `SpectraFailure` (xTB failed, the bonding changed, a saddle point) or
    `UsageError` (no 3D coordinates)."""
    from chemgen.spectra.compute import SpectraSettings, compute_spectrum

    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise UsageError("the candidate has no 3D coordinates to start xTB from")
    work = Chem.AddHs(mol, addCoords=True)  # a no-op for sampled molecules, whose hydrogens are atoms
    numbers = np.array([atom.GetAtomicNum() for atom in work.GetAtoms()])
    result = compute_spectrum(numbers, work.GetConformer().GetPositions(), settings or SpectraSettings(),
                              charge=Chem.GetFormalCharge(work))
    spectra = {"ir": broaden(result.frequencies_cm1, result.ir_intensities_km_mol, "ir", fwhm=fwhm)}
    if result.raman_activities_a4_amu is not None:
        spectra["raman"] = broaden(result.frequencies_cm1, result.raman_activities_a4_amu, "raman", fwhm=fwhm)
    return spectra


def _failure(err: Exception) -> str:
    return str(err) if isinstance(err, ChemgenError) else f"{type(err).__name__}: {err}"


def rerank(candidates: Sequence[Candidate], query_spectra: QuerySpectra,
           compute_fn: ComputeFn = computed_spectra, rule: str = "similarity") -> list[Candidate]:
    """The candidates with spectra, similarities and scores, re-ranked by ``rule`` (module docstring).

    ``compute_fn(mol)`` gets a copy of each candidate's 3D molecule and returns its spectra on `GRID_CM1`
    (``{"ir": ..., "raman": ...}``). Any exception it (or the comparison) raises becomes that candidate's
    ``failure``; a bad query or rule raises `UsageError` before anything is computed. A `Ranking` comes
    back as a `Ranking` with the same sample counts.
    """
    if rule not in RERANK_RULES:
        raise UsageError(f"unknown re-rank rule {rule!r} (known: {', '.join(RERANK_RULES)})")
    query_arrays(query_spectra)  # a bad query is the caller's error, not every candidate's failure
    scored, failed = [], []
    for candidate in sorted(candidates, key=lambda c: c.rank):
        try:
            spectra = dict(compute_fn(Chem.Mol(candidate.mol)))
            similarities = modality_similarities(query_spectra, spectra)
        except Exception as err:  # noqa: BLE001 - one candidate's failure must not stop the ranking
            failed.append(replace(candidate, similarity=None, similarities={}, score=None, spectra=None,
                                  failure=_failure(err)))
            continue
        similarity = float(np.mean(list(similarities.values())))
        score = similarity if rule == "similarity" else max(similarity, 0.0) * candidate.fraction
        scored.append(replace(candidate, similarity=similarity, similarities=similarities, score=score,
                              spectra=spectra, failure=None))
    scored.sort(key=lambda c: (-c.score, -c.count, c.inchikey))
    reranked = [replace(c, rank=i) for i, c in enumerate(scored + failed, start=1)]
    if isinstance(candidates, Ranking):  # keep the query's sample counts
        return Ranking(reranked, candidates.num_samples, candidates.num_valid, candidates.num_formula_match,
                       candidates.formula, candidates.invalid)
    return reranked

"""Sampled molecules -> ranked candidate structures.

`rank_candidates` groups the samples of one query by `chemgen.elucidation.identity.canonical_key`,
counts each group, keeps one 3D representative per group and ranks the groups by count.

Definitions:

- A sample is *valid* when it is a molecule that sanitises and is one connected piece (a spectrum belongs
  to one molecule; DiffSpectra's ``is_valid`` also refuses several fragments). ``None`` samples (the model
  could not build a molecule) and the rest are invalid; `Ranking.invalid` counts why.
- ``fraction`` = the group's count / all valid samples of the query (before any formula filter), the share
  of the model's valid answers that are this structure.
- With a formula, a sample whose Hill formula (RDKit ``CalcMolFormula``, explicit and implicit H counted)
  differs from it is left out before grouping.
- The representative: of the group's samples, the first (in sampling order) of its most often sampled
  form (its own tautomer), sanitised, with the sample's coordinates. Its formula is the candidate's.
- Order: count, descending; ties by InChIKey, ascending, which does not depend on sampling order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from rdkit import Chem

from chemgen.elucidation.identity import CanonicalForm, canonical_form, molecule_formula, normalise_formula
from chemgen.errors import UsageError


@dataclass(frozen=True, eq=False)
class Candidate:
    """One candidate structure for a query.

    rank : 1-based position in its list
    smiles : canonical SMILES of the canonical tautomer (the key's form)
    inchikey : the canonical key
    count, fraction : how often it was sampled, and the share of valid samples
    formula : Hill formula of the representative
    mol : the representative sample (sanitised, hydrogens explicit as sampled, 3D coordinates)
    sample_smiles : SMILES of the representative as sampled (its own tautomer)
    similarity, similarities : spectral similarity (mean, and per modality) after `rerank`
    score : the re-rank score after `rerank`
    spectra : the candidate's computed spectra on ``GRID_CM1`` after `rerank`
    failure : why its spectra could not be computed (then similarity and score are None)
    sources : where it came from when candidates are pooled (`chemgen.elucidation.pooling`): "model",
        "library:<name>", "user:<name>"
    formula_match : whether it has the query's formula (None: no formula given)
    origin : the library entry it came from (`chemgen.elucidation.library.LibraryHit`), None for a sample
    """

    rank: int
    smiles: str
    inchikey: str
    count: int
    fraction: float
    formula: str
    mol: Chem.Mol
    sample_smiles: str
    similarity: float | None = None
    similarities: Mapping[str, float] = field(default_factory=dict)
    score: float | None = None
    spectra: Mapping[str, np.ndarray] | None = None
    failure: str | None = None
    sources: tuple[str, ...] = ()
    formula_match: bool | None = None
    origin: Any = None


class Ranking(list):
    """The candidates (a list, best first) with the query's sample counts as attributes.

    num_samples, num_valid : samples given, and valid ones
    num_formula_match : valid samples of the requested formula (``num_valid`` without a formula)
    formula : the requested formula in Hill order, or None
    invalid : why the invalid samples were invalid, counted
    """

    def __init__(self, candidates: Iterable[Candidate] = (), num_samples: int = 0, num_valid: int = 0,
                 num_formula_match: int = 0, formula: str | None = None, invalid: Counter | None = None):
        super().__init__(candidates)
        self.num_samples = num_samples
        self.num_valid = num_valid
        self.num_formula_match = num_formula_match
        self.formula = formula
        self.invalid = invalid if invalid is not None else Counter()


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UsageError(f"top_k must be a whole number >= 1 (or None for all), not {top_k!r}")


def _why_invalid(sample: Chem.Mol | None, form: CanonicalForm | None) -> str | None:
    if sample is None:
        return "no molecule"
    if form is None:
        return "does not sanitise"
    if len(Chem.GetMolFrags(form.mol)) > 1:
        return "several fragments"
    return None


def _sanitised_copy(mol: Chem.Mol) -> Chem.Mol:
    copy = Chem.Mol(mol)
    Chem.SanitizeMol(copy)  # succeeded once in canonical_form, so it succeeds again
    return copy


def rank_candidates(samples: list[Chem.Mol | None], formula: str | None = None, top_k: int | None = 10,
                    stereo: bool = False) -> Ranking:
    """Group, count and rank one query's samples (module docstring); the best ``top_k`` (None: all).

    Raises `UsageError` for a bad formula or ``top_k`` before looking at any sample.
    """
    _check_top_k(top_k)
    wanted = normalise_formula(formula) if formula is not None else None
    invalid: Counter[str] = Counter()
    groups: dict[str, list[tuple[Chem.Mol, CanonicalForm]]] = {}
    num_valid = matched = 0
    for sample in samples:
        form = canonical_form(sample, stereo)
        reason = _why_invalid(sample, form)
        if reason is not None:
            invalid[reason] += 1
            continue
        num_valid += 1
        if wanted is not None and molecule_formula(_sanitised_copy(sample)) != wanted:
            continue
        matched += 1
        groups.setdefault(form.inchikey, []).append((sample, form))
    candidates = []
    for key, members in groups.items():
        forms = Counter(form.sampled_smiles for _, form in members)
        top_form = max(forms, key=lambda s: forms[s])  # first of the most frequent: max keeps the first
        sample, form = next((s, f) for s, f in members if f.sampled_smiles == top_form)
        representative = _sanitised_copy(sample)
        candidates.append(Candidate(0, form.smiles, key, len(members), len(members) / num_valid,
                                    molecule_formula(representative), representative, form.sampled_smiles))
    candidates.sort(key=lambda c: (-c.count, c.inchikey))
    chosen = candidates if top_k is None else candidates[:top_k]
    ranked = [replace(c, rank=i) for i, c in enumerate(chosen, start=1)]
    return Ranking(ranked, len(samples), num_valid, matched, wanted, invalid)


"""Uniqueness and novelty of generated crystals: StructureMatcher under ADiT's or pymatgen's rules.

``<preset>/*`` (`MATCHER_PRESETS`): ``adit`` is ADiT's (``src/eval/crystal_generation.py``: ltol 0.3, stol 0.5,
angle_tol 10; novelty per unique group, on unreduced cells, over unique groups); ``pymatgen`` uses pymatgen's
default tolerances (0.2, 0.3, 5), as FlowMM does, per valid sample on reduced cells. Novelty is checked against
the training split only, as the published models do; a sample whose formula matches a training row without
coordinates is "undetermined" and reported apart, never as novel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from chemgen.atoms import AtomicSystem
from chemgen.scoring.crystal_validity import CrystalRecord, to_structure

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

NOVEL, KNOWN, UNDETERMINED = "novel", "known", "undetermined"


@dataclass(frozen=True)
class MatcherPreset:
    """How uniqueness and novelty are judged: `StructureMatcher` tolerances (other arguments stay at
    pymatgen's defaults: primitive_cell=True, scale=True, attempt_supercell=False) and whose rules.

    ``per_group``: ADiT's rules. Novelty is judged only for the first member of each unique group,
    matched against the references *without* reducing either structure (``fit(...,
    skip_structure_reduction=True)`` on the cells as they are), and the novel rate is novel groups /
    unique groups. Otherwise every valid sample is judged on Niggli-reduced primitive cells (what
    ``fit`` itself does) and rates are fractions of valid samples.
    """

    ltol: float
    stol: float
    angle_tol: float
    per_group: bool = False

    def matcher(self) -> Any:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol)


MATCHER_PRESETS: dict[str, MatcherPreset] = {
    # ADiT src/eval/crystal_generation.py: StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    "adit": MatcherPreset(ltol=0.3, stol=0.5, angle_tol=10.0, per_group=True),
    # pymatgen's default tolerances, which FlowMM's novelty.py uses (StructureMatcher()); not
    # MatterGen's matcher, which is disorder-aware (DefaultDisorderedStructureMatcher)
    "pymatgen": MatcherPreset(ltol=0.2, stol=0.3, angle_tol=5.0),
    # screening asks "is this a known compound?": ADiT's looser tolerances (a relaxed candidate still matches its
    # known counterpart), on reduced primitive cells (whatever cell a source wrote it in)
    "screening": MatcherPreset(ltol=0.3, stol=0.5, angle_tol=10.0),
}


# CDVAE matches a reconstruction to its target with these tolerances (and never scored novelty).
CDVAE_RECONSTRUCTION = MatcherPreset(ltol=0.3, stol=0.5, angle_tol=10.0)


# ============================================================================ uniqueness / novelty
def reduce_structure(structure: Structure) -> Structure:
    """Niggli-reduced primitive cell, exactly what `StructureMatcher.fit` computes before matching,
    so each structure is reduced once and matched with ``skip_structure_reduction=True``."""
    from pymatgen.core import Structure

    return Structure.from_sites(structure).get_reduced_structure(reduction_algo="niggli").get_primitive_structure()


class ReducedStructure:
    """A structure (or its CIF text, parsed on first use) and its reduced form, computed on first
    use; failures are remembered."""

    def __init__(self, structure: Structure | None = None, cif: str | None = None) -> None:
        self._structure, self._cif = structure, cif
        self._reduced: Structure | None = None
        self.error: str | None = None

    def raw(self) -> Structure | None:
        """The cell as given (ADiT matches these)."""
        if self._structure is None and self.error is None:
            from pymatgen.core import Structure

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pymatgen warns on rounded CIF coordinates
                    self._structure = Structure.from_str(self._cif, fmt="cif", primitive=False)
            except (ValueError, KeyError, IndexError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
        return self._structure

    def get(self) -> Structure | None:
        """The Niggli-reduced primitive cell."""
        if self._reduced is None and self.error is None:
            structure = self.raw()
            if structure is None:
                return None
            try:
                self._reduced = reduce_structure(structure)
            except (ValueError, np.linalg.LinAlgError, KeyError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
        return self._reduced

    def form(self, reduced: bool) -> Structure | None:
        return self.get() if reduced else self.raw()


def _fits(matcher: Any, a: Structure, b: Structure) -> bool:
    """``matcher.fit`` without reducing again; the site-count check is exact because with
    attempt_supercell=False pymatgen only matches equal numbers of sites."""
    if len(a) != len(b):
        return False
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.debug("StructureMatcher failed: %s", exc)
        return False


class ReferenceSet:
    """Known structures for novelty, bucketed by reduced formula and parsed and reduced lazily.

    Only structures that share a reduced formula can match, so a sample is compared with a handful
    of references, and a reference is parsed and reduced only when some sample shares its formula.

    ``undetermined_formulas`` are reduced formulas of reference rows whose coordinates are not on
    hand (MP-20's training rows beyond ``train_first1000`` here): a sample that matches no known
    structure but shares such a formula can be neither called novel nor known, unless those rows'
    primitive site counts are known and differ from the sample's (`could_match_undetermined`).
    """

    def __init__(self, source: str = "") -> None:
        self._buckets: dict[str, list[ReducedStructure]] = {}
        # formula -> primitive site counts of its rows without coordinates (None: some count unknown)
        self._undetermined: dict[str, set[int] | None] = {}
        self.source = source

    @property
    def undetermined_formulas(self) -> set[str]:
        return set(self._undetermined)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, formula: str, item: ReducedStructure) -> None:
        self._buckets.setdefault(_reduced_formula(formula), []).append(item)

    def add_undetermined(self, formulas: Iterable[str], primitive_sites: Iterable[int] | None = None) -> None:
        """Rows known only by formula, and optionally by the number of sites of their primitive cell (MP-20's
        metadata ``num_atoms_primitive``, which equals the Niggli-reduced primitive cell's site count)."""
        formulas = list(formulas)
        sites = list(primitive_sites) if primitive_sites is not None else [None] * len(formulas)
        for formula, n in zip(formulas, sites, strict=True):
            key = _reduced_formula(formula)
            counts = self._undetermined.setdefault(key, set())
            if counts is None:
                continue
            if n is None or n != n:   # unknown (None or NaN): this formula stays undetermined whatever the count
                self._undetermined[key] = None
            else:
                counts.add(int(n))

    def could_match_undetermined(self, formula: str, reduced: Structure | None) -> bool:
        """Whether some row without coordinates could be this reduced structure. `StructureMatcher` with
        ``attempt_supercell=False`` matches only cells of equal site count after primitive reduction (pymatgen's
        ``_strict_match``), so a reduced sample whose site count no such row of its formula has is none of them."""
        if formula not in self._undetermined:
            return False
        counts = self._undetermined[formula]
        return counts is None or reduced is None or len(reduced) in counts

    @classmethod
    def from_structures(cls, structures: Iterable[AtomicSystem | Structure], source: str = "") -> ReferenceSet:
        refs = cls(source)
        for s in structures:
            structure = to_structure(s)
            refs.add(structure.composition.reduced_formula, ReducedStructure(structure))
        return refs

    @classmethod
    def from_cifs(cls, formulas: Iterable[str], cifs: Iterable[str], source: str = "") -> ReferenceSet:
        """From a CDVAE-format table's ``pretty_formula`` and ``cif`` columns (parsed on demand)."""
        refs = cls(source)
        for formula, cif in zip(formulas, cifs, strict=True):
            refs.add(formula, ReducedStructure(cif=cif))
        return refs

    def bucket(self, reduced_formula: str) -> list[ReducedStructure]:
        return self._buckets.get(reduced_formula, [])


@lru_cache(maxsize=100_000)
def _reduced_formula(formula: str) -> str:
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no Pauling electronegativity for He": ordering only
        return Composition(formula).reduced_formula


def unique_mask(structures: Sequence[Structure], formulas: Sequence[str], preset: str = "adit",
                reduced: Sequence[ReducedStructure] | None = None) -> np.ndarray:
    """True for the first structure of each group of matching structures.

    The grouping equals `StructureMatcher.group_structures` (each structure joins the first earlier
    group whose first member fits it), done per reduced formula.
    """
    matcher = MATCHER_PRESETS[preset].matcher()
    reduced = reduced or [ReducedStructure(s) for s in structures]
    first = np.zeros(len(structures), dtype=bool)
    representatives: dict[str, list[Structure]] = {}
    for i, formula in enumerate(formulas):
        candidate = reduced[i].get()
        if candidate is None:
            continue
        reps = representatives.setdefault(formula, [])
        if not any(_fits(matcher, rep, candidate) for rep in reps):
            reps.append(candidate)
            first[i] = True
    return first


def novelty_verdicts(structures: Sequence[Structure], formulas: Sequence[str], references: ReferenceSet,
                     preset: str = "adit", reduced: Sequence[ReducedStructure] | None = None) -> list[str]:
    """`NOVEL`, `KNOWN` or `UNDETERMINED` per structure.

    Known: some reference structure fits it (on reduced cells, or on the cells as they are under
    ADiT's rules). Undetermined: nothing fits, but a reference without coordinates has its formula
    (and, on reduced cells, could have its primitive site count).
    """
    rules = MATCHER_PRESETS[preset]
    matcher = rules.matcher()
    on_reduced = not rules.per_group
    reduced = reduced or [ReducedStructure(s) for s in structures]
    verdicts = []
    for i, formula in enumerate(formulas):
        candidate = reduced[i].form(on_reduced)
        known = candidate is not None and any(
            ref_structure is not None and _fits(matcher, candidate, ref_structure)
            for ref_structure in (ref.form(on_reduced) for ref in references.bucket(formula)))
        if known:
            verdicts.append(KNOWN)
        elif (references.could_match_undetermined(formula, candidate) if on_reduced
              else formula in references.undetermined_formulas):
            verdicts.append(UNDETERMINED)
        else:
            verdicts.append(NOVEL)
    return verdicts


def novel_mask(structures: Sequence[Structure], formulas: Sequence[str], references: ReferenceSet,
               preset: str = "adit", reduced: Sequence[ReducedStructure] | None = None) -> np.ndarray:
    """True where the structure is novel (undetermined ones are not)."""
    return np.array([v == NOVEL for v in novelty_verdicts(structures, formulas, references, preset, reduced)],
                    dtype=bool)


def uniqueness_novelty_metrics(valid: list[CrystalRecord], structures: list[Structure | None],
                        references: ReferenceSet | None, preset: str, notes: dict[str, str]) -> dict[str, float]:
    """Uniqueness (and novelty when references are given) among valid samples; sets the record flags.

    ADiT's rules (``per_group``) judge novelty only for the first member of each unique group and
    divide by the number of groups; otherwise every valid sample is judged and rates are over valid.
    "Undetermined" samples (see `ReferenceSet`) count as neither novel nor known.
    """
    reduced = [ReducedStructure(structures[r.index]) for r in valid]  # reduced once, shared by both scores
    formulas = [r.formula for r in valid]
    valid_structures = [structures[r.index] for r in valid]
    first = unique_mask(valid_structures, formulas, preset, reduced)
    for r, u in zip(valid, first, strict=True):
        r.unique = bool(u)
    out = {f"{preset}/unique_rate": float(first.mean())}  # ADiT: #groups / #valid
    if references is not None:
        judged = np.flatnonzero(first) if MATCHER_PRESETS[preset].per_group else np.arange(len(valid))
        verdicts = novelty_verdicts([valid_structures[i] for i in judged], [formulas[i] for i in judged],
                                    references, preset, [reduced[i] for i in judged])
        for i, verdict in zip(judged, verdicts, strict=True):
            valid[i].novelty = verdict
        verdicts_ = np.array(verdicts)
        denominator = max(len(judged), 1)  # ADiT: unique groups; otherwise valid samples
        out[f"{preset}/novel_rate"] = float(np.sum(verdicts_ == NOVEL) / denominator)
        out[f"{preset}/undetermined_rate"] = float(np.sum(verdicts_ == UNDETERMINED) / denominator)
        out[f"{preset}/unique_novel_rate"] = float(sum(r.unique and r.novelty == NOVEL for r in valid) / len(valid))
        if references.source:
            notes["novelty_reference"] = references.source
    failed = sum(x.error is not None for x in reduced)
    if failed:
        notes["matching"] = f"{failed} valid structures could not be reduced and were never matched"
    return out

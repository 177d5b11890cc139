"""Scores for generated crystals, each named after the protocol it follows.

Protocols (../shared/reference/ANCHORS.md, A3/A4 and B7):

* ``cdvae/*`` — CDVAE ``scripts/compute_metrics.py`` / ``eval_utils.py``: structural validity
  (every interatomic distance >= 0.5 A under periodic boundaries, volume >= 0.1 A^3), SMACT
  compositional validity as smact 2.2.1 computed it (SMACT14 oxidation states), coverage
  (COV-R / COV-P) and Wasserstein distances of density and of the number of elements.
* ``adit/*`` validity — ADiT ``src/eval/crystal.py``: smact 2.6; a crystal with a lattice angle
  outside (50, 130) degrees or a volume below 0.1 A^3 is not constructed, so its composition is
  invalid too; more than 1e7 oxidation-state combinations make a composition invalid.
* ``<preset>/*`` — uniqueness and novelty (`MATCHER_PRESETS`): ``adit`` is ADiT's
  (``src/eval/crystal_generation.py``: ltol 0.3, stol 0.5, angle_tol 10; novelty per unique group,
  on unreduced cells, over unique groups); ``pymatgen`` uses pymatgen's default tolerances (0.2,
  0.3, 5), as FlowMM does, per valid sample on reduced cells. Novelty is checked against the
  training split only, as the published models do; a sample whose formula matches a training row
  without coordinates is "undetermined" and reported apart, never as novel.
* ``chgnet_mp20/*`` — stability from a batched CHGNet relaxation (`chemgen.scoring.relax`) against
  the MP-20 hull (`chemgen.scoring.hull`). The headline is the metastable rate (E_hull <= 0.1
  eV/atom, MatterGen's "stable"); "stable" (E_hull <= 0, FlowMM/ADiT) is reported as an expected
  count, sum of Phi(-E_hull / sigma) with sigma CHGNet's held-out error, beside the hard call kept
  for the literature; S.U.N. / M.S.U.N. combine them with uniqueness and novelty.

Validity never depends on whether coverage is computed: CrystalNN fingerprint failures are
counted apart (CDVAE and ADiT, which always fingerprint, would also call those crystals invalid).

One bad structure never stops a batch: it is scored invalid and the reason is kept per sample.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chemgen.atoms import SYMBOLS, AtomicSystem
from chemgen.errors import ChemgenError, UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymatgen.core import Structure

    from chemgen.scoring.hull import ElementalReferences, MP20Hull, StabilitySigma

log = logging.getLogger(__name__)

Validity = Literal["cdvae", "adit"]

DISTANCE_CUTOFF = 0.5  # Angstrom, CDVAE structure_validity
MIN_VOLUME = 0.1  # Angstrom^3
ADIT_ANGLE_RANGE = (50.0, 130.0)  # degrees, exclusive (ADiT array_dict_to_crystal, from FlowMM)
ADIT_MAX_OX_COMBINATIONS = 1e7
MAX_ATOMIC_NUMBER = 104  # ADiT: atom types outside 1..104 are invalid
COV_CUTOFFS = {"mp20": {"struct": 0.4, "comp": 10.0}, "carbon": {"struct": 0.2, "comp": 4.0},
               "perovskite": {"struct": 0.2, "comp": 4.0}}  # CDVAE COV_Cutoffs
N_WDIST_SAMPLES = 1000  # CDVAE compares 1000 random valid samples with the ground truth


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
}
# CDVAE matches a reconstruction to its target with these tolerances (and never scored novelty).
CDVAE_RECONSTRUCTION = MatcherPreset(ltol=0.3, stol=0.5, angle_tol=10.0)


# ============================================================================ validity
class CrystalConstructionError(ChemgenError, ValueError):
    """A sample that cannot be turned into a pymatgen `Structure`."""


def to_structure(system: AtomicSystem | Structure) -> Structure:
    """A pymatgen `Structure` from a record (or the structure itself), checked for finiteness."""
    from pymatgen.core import Structure

    if isinstance(system, AtomicSystem):
        if not system.pbc:
            raise CrystalConstructionError("not periodic (a molecule)")
        structure = system.to_pymatgen()
    elif isinstance(system, Structure):
        structure = system
    else:
        raise CrystalConstructionError(f"cannot score an object of type {type(system).__name__}")
    if not structure.is_ordered:
        raise CrystalConstructionError("disordered structure")
    if not (np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords))):
        raise CrystalConstructionError("non-finite lattice or coordinates")
    return structure


def structure_validity(structure: Structure, cutoff: float = DISTANCE_CUTOFF,
                       min_volume: float = MIN_VOLUME) -> tuple[bool, str | None]:
    """CDVAE structural validity: shortest periodic distance >= ``cutoff`` and volume >= ``min_volume``.

    As in CDVAE, distances are between distinct sites (minimum image), so a site's distance to its own
    periodic image is not checked.

    Returns
    -------
    (valid, reason) with ``reason`` None when valid.
    """
    volume = structure.volume
    if not volume >= min_volume:  # also catches NaN
        return False, f"volume {volume:.3g} < {min_volume}"
    if len(structure) > 1:
        distances = structure.distance_matrix
        np.fill_diagonal(distances, np.inf)
        shortest = float(distances.min())
        if not shortest >= cutoff:
            return False, f"atoms {shortest:.3g} A apart (< {cutoff})"
    return True, None


def reduced_composition(atomic_numbers: Iterable[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols (ordered by atomic number) and their counts divided by their gcd."""
    counter = Counter(int(z) for z in atomic_numbers)
    numbers = sorted(counter)
    counts = np.array([counter[z] for z in numbers])
    counts = counts // np.gcd.reduce(counts)
    return tuple(SYMBOLS[z] for z in numbers), tuple(int(c) for c in counts)


# ---------------------------------------------------------------------------- SMACT, as each paper ran it
def _pauling_test_smact221(oxidation_states: Sequence[int], electronegativities: Sequence[float | None]) -> bool:
    """smact 2.2.1's ``eneg_states_test`` wrapped in CDVAE's ``try/except TypeError: True``.

    Pairs are visited in order. A cation-anion pair with a missing electronegativity raised
    TypeError in 2.2.1 (``None >= x``), which CDVAE catches as "no data, assume it is okay": the
    whole test passes. A same-sign pair with a missing value reached 2.2.1's ``is None`` branch and
    failed.
    """
    for (ox1, eneg1), (ox2, eneg2) in itertools.combinations(zip(oxidation_states, electronegativities), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if eneg1 is None or eneg2 is None:
                return True
            cation, anion = (eneg1, eneg2) if ox1 > 0 else (eneg2, eneg1)
            if cation >= anion:
                return False
        elif eneg1 is None or eneg2 is None:
            return False
    return True


def _pauling_test_smact26(oxidation_states: Sequence[int], electronegativities: Sequence[float | None]) -> bool:
    """smact 2.6's ``eneg_states_test``: any pair with a missing electronegativity fails (ADiT's
    ``except TypeError`` never fires)."""
    for (ox1, eneg1), (ox2, eneg2) in itertools.combinations(zip(oxidation_states, electronegativities), 2):
        if eneg1 is None or eneg2 is None:
            return False
        if (ox1 > 0 and ox2 < 0 and eneg1 >= eneg2) or (ox1 < 0 and ox2 > 0 and eneg1 <= eneg2):
            return False
    return True


@dataclass(frozen=True)
class SmactRelease:
    """The SMACT data and electronegativity rule of one pinned release.

    Both releases default to the SMACT14 oxidation-state list (``Element.oxidation_states`` then);
    smact 4, installed here, ships it as ``oxidation_states_smact14`` (identical to 2.6's file) and
    defaults to ICSD24 instead, which changes 462 of the 9,046 MP-20 test verdicts. The overrides
    restore what differed in the older release's data files.
    """

    name: str
    pauling_test: Callable[[Sequence[int], Sequence[float | None]], bool]
    oxidation_state_overrides: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    electronegativity_overrides: Mapping[str, float] = field(default_factory=dict)


SMACT_RELEASES: dict[str, SmactRelease] = {
    # CDVAE pinned smact 2.2.1 (Sept. 2020): Ir's list still had -2 (changed to -3 later that month)
    # and Zr's Pauling electronegativity read 0.33 (a typo fixed to 1.33 in 2023)
    "2.2.1": SmactRelease("2.2.1", _pauling_test_smact221,
                          {"Ir": (-2, -1, 1, 2, 3, 4, 5, 6, 7, 8)}, {"Zr": 0.33}),
    "2.6": SmactRelease("2.6", _pauling_test_smact26),  # ADiT
}
VALIDITY_SMACT = {"cdvae": "2.2.1", "adit": "2.6"}


@lru_cache(maxsize=100_000)
def smact_validity(symbols: tuple[str, ...], counts: tuple[int, ...], release: str = "2.2.1",
                   use_pauling_test: bool = True, include_alloys: bool = True,
                   max_combinations: float | None = None) -> bool:
    """CDVAE's SMACT test: is some assignment of oxidation states charge neutral and Pauling-consistent?

    Parameters
    ----------
    symbols, counts : element symbols and their gcd-reduced counts (`reduced_composition`)
    release : a key of `SMACT_RELEASES`: CDVAE ran 2.2.1, ADiT 2.6
    use_pauling_test : require cations to be less electronegative than anions
    include_alloys : compositions made only of `smact.metals` are valid
    max_combinations : ADiT returns False when the product over elements of the number of oxidation
        states exceeds this (1e7); CDVAE has no limit (None)
    """
    import smact

    if len(set(symbols)) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    release_ = SMACT_RELEASES[release]
    space = smact.element_dictionary(symbols)
    electronegativities = [release_.electronegativity_overrides.get(s, space[s].pauling_eneg) for s in symbols]
    ox_states = [release_.oxidation_state_overrides.get(s, space[s].oxidation_states_smact14) or [] for s in symbols]
    if max_combinations is not None and math.prod(len(o) for o in ox_states) > max_combinations:
        return False
    threshold = max(counts)
    stoichs = [(c,) for c in counts]
    for ox in itertools.product(*ox_states):
        if not smact.neutral_ratios(ox, stoichs=stoichs, threshold=threshold):
            continue
        if not use_pauling_test or release_.pauling_test(ox, electronegativities):
            return True
    return False


@dataclass
class CrystalRecord:
    """Per-sample results; ``None`` where a score was not computed."""

    index: int
    formula: str | None = None
    num_atoms: int = 0
    struct_valid: bool = False
    comp_valid: bool = False
    reason: str | None = None
    density: float | None = None
    n_elements: int | None = None
    unique: bool | None = None
    novelty: str | None = None  # NOVEL, KNOWN or UNDETERMINED; None where not judged
    e_form_per_atom: float | None = None
    e_above_hull: float | None = None
    stability_error: str | None = None
    relax_status: str | None = None  # converged, step_cap, time_budget or failed (batched CHGNet relaxation)
    fingerprint_failed: bool = False

    @property
    def valid(self) -> bool:
        # Never depends on whether coverage was computed: a fingerprint failure is reported apart
        # (CDVAE/ADiT, which always fingerprint, would also count such a crystal invalid).
        return self.struct_valid and self.comp_valid


def _adit_constructs(structure: Structure) -> str | None:
    """Why ADiT would not construct this crystal (None if it would): its lattice-angle rule (from
    FlowMM's ``array_dict_to_crystal``) and volume floor. ADiT then marks the composition invalid too."""
    low, high = ADIT_ANGLE_RANGE
    angles = np.asarray(structure.lattice.angles)
    if not np.all((angles > low) & (angles < high)):
        return f"lattice angle outside ({low:g}, {high:g})"
    if not structure.volume >= MIN_VOLUME:
        return f"volume {structure.volume:.3g} < {MIN_VOLUME}"
    return None


def assess_validity(index: int, system: Any, validity: Validity = "cdvae") -> tuple[CrystalRecord, Structure | None]:
    """Structural and compositional validity of one sample under CDVAE's or ADiT's rules; never
    raises for a bad sample."""
    record = CrystalRecord(index)
    if system is None:
        record.reason = "no structure (generation failed)"
        return record, None
    try:
        structure = to_structure(system)
    except (CrystalConstructionError, ValueError, KeyError) as exc:
        record.reason = f"construction failed: {exc}"
        return record, None
    numbers = [site.specie.Z for site in structure]
    record.num_atoms = len(numbers)
    if not numbers or min(numbers) < 1 or max(numbers) > MAX_ATOMIC_NUMBER:
        record.reason = f"atomic numbers outside 1..{MAX_ATOMIC_NUMBER}"
        return record, None
    record.formula = structure.composition.reduced_formula
    record.n_elements = len(set(numbers))
    with np.errstate(all="ignore"):
        not_constructed = _adit_constructs(structure) if validity == "adit" else None
        if not_constructed:
            record.reason = f"{not_constructed} (ADiT: neither structure nor composition valid)"
            return record, None
        record.struct_valid, struct_reason = structure_validity(structure)
    reasons = [struct_reason] if struct_reason else []
    symbols, counts = reduced_composition(numbers)
    cap = ADIT_MAX_OX_COMBINATIONS if validity == "adit" else None
    try:
        record.comp_valid = smact_validity(symbols, counts, VALIDITY_SMACT[validity], max_combinations=cap)
        if not record.comp_valid:
            reasons.append("not charge balanced (SMACT)")
    except (KeyError, NameError) as exc:  # SMACT has no data for an element
        reasons.append(f"no SMACT data: {exc}")
    record.reason = "; ".join(reasons) or None
    if record.struct_valid:
        record.density = float(structure.density)
    return record, structure


# ============================================================================ uniqueness / novelty
def reduce_structure(structure: Structure) -> Structure:
    """Niggli-reduced primitive cell, exactly what `StructureMatcher.fit` computes before matching,
    so each structure is reduced once and matched with ``skip_structure_reduction=True``."""
    from pymatgen.core import Structure

    return Structure.from_sites(structure).get_reduced_structure(reduction_algo="niggli").get_primitive_structure()


class _Reduced:
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
    structure but shares such a formula can be neither called novel nor known.
    """

    def __init__(self, source: str = "") -> None:
        self._buckets: dict[str, list[_Reduced]] = {}
        self.undetermined_formulas: set[str] = set()
        self.source = source

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, formula: str, item: _Reduced) -> None:
        self._buckets.setdefault(_reduced_formula(formula), []).append(item)

    def add_undetermined(self, formulas: Iterable[str]) -> None:
        self.undetermined_formulas.update(_reduced_formula(f) for f in formulas)

    @classmethod
    def from_structures(cls, structures: Iterable[AtomicSystem | Structure], source: str = "") -> ReferenceSet:
        refs = cls(source)
        for s in structures:
            structure = to_structure(s)
            refs.add(structure.composition.reduced_formula, _Reduced(structure))
        return refs

    @classmethod
    def from_cifs(cls, formulas: Iterable[str], cifs: Iterable[str], source: str = "") -> ReferenceSet:
        """From a CDVAE-format table's ``pretty_formula`` and ``cif`` columns (parsed on demand)."""
        refs = cls(source)
        for formula, cif in zip(formulas, cifs, strict=True):
            refs.add(formula, _Reduced(cif=cif))
        return refs

    def bucket(self, reduced_formula: str) -> list[_Reduced]:
        return self._buckets.get(reduced_formula, [])


@lru_cache(maxsize=100_000)
def _reduced_formula(formula: str) -> str:
    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no Pauling electronegativity for He": ordering only
        return Composition(formula).reduced_formula


def unique_mask(structures: Sequence[Structure], formulas: Sequence[str], preset: str = "adit",
                reduced: Sequence[_Reduced] | None = None) -> np.ndarray:
    """True for the first structure of each group of matching structures.

    The grouping equals `StructureMatcher.group_structures` (each structure joins the first earlier
    group whose first member fits it), done per reduced formula.
    """
    matcher = MATCHER_PRESETS[preset].matcher()
    reduced = reduced or [_Reduced(s) for s in structures]
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


NOVEL, KNOWN, UNDETERMINED = "novel", "known", "undetermined"


def novelty_verdicts(structures: Sequence[Structure], formulas: Sequence[str], references: ReferenceSet,
                     preset: str = "adit", reduced: Sequence[_Reduced] | None = None) -> list[str]:
    """`NOVEL`, `KNOWN` or `UNDETERMINED` per structure.

    Known: some reference structure fits it (on reduced cells, or on the cells as they are under
    ADiT's rules). Undetermined: nothing fits, but a reference without coordinates has its formula.
    """
    rules = MATCHER_PRESETS[preset]
    matcher = rules.matcher()
    on_reduced = not rules.per_group
    reduced = reduced or [_Reduced(s) for s in structures]
    verdicts = []
    for i, formula in enumerate(formulas):
        candidate = reduced[i].form(on_reduced)
        known = candidate is not None and any(
            ref_structure is not None and _fits(matcher, candidate, ref_structure)
            for ref_structure in (ref.form(on_reduced) for ref in references.bucket(formula)))
        if known:
            verdicts.append(KNOWN)
        elif formula in references.undetermined_formulas:
            verdicts.append(UNDETERMINED)
        else:
            verdicts.append(NOVEL)
    return verdicts


def novel_mask(structures: Sequence[Structure], formulas: Sequence[str], references: ReferenceSet,
               preset: str = "adit", reduced: Sequence[_Reduced] | None = None) -> np.ndarray:
    """True where the structure is novel (undetermined ones are not)."""
    return np.array([v == NOVEL for v in novelty_verdicts(structures, formulas, references, preset, reduced)],
                    dtype=bool)


# ============================================================================ distributions, coverage
def wasserstein_metrics(densities: Sequence[float], n_elements: Sequence[int], gt_densities: Sequence[float],
                        gt_n_elements: Sequence[int], n_samples: int = N_WDIST_SAMPLES,
                        seed: int = 0) -> dict[str, float]:
    """CDVAE's W-distances of density (g/cm^3) and of the number of elements.

    CDVAE draws 1000 valid samples at random (and refuses fewer); here fewer valid samples are all
    used, and ``cdvae/wdist_n_samples`` says how many were.
    """
    from scipy.stats import wasserstein_distance

    densities, n_elements = np.asarray(densities, float), np.asarray(n_elements, float)
    if len(densities) == 0 or len(gt_densities) == 0:
        return {}
    if len(densities) > n_samples:
        pick = np.random.default_rng(seed).choice(len(densities), n_samples, replace=False)
        densities, n_elements = densities[pick], n_elements[pick]
    return {"cdvae/wdist_density": float(wasserstein_distance(densities, gt_densities)),
            "cdvae/wdist_num_elems": float(wasserstein_distance(n_elements, gt_n_elements)),
            "cdvae/wdist_n_samples": float(len(densities))}


# CDVAE's CompScaler (cdvae/common/constants.py): mean and standard deviation of each of the 132
# Magpie ElementProperty features, used to normalise composition fingerprints before distances.
MAGPIE_SCALER_MEANS = np.array([
    21.194441759304013, 58.20212663122281, 37.0076848719188, 36.52738520455582, 13.350626389725019,
    29.468922184630255, 28.71735137747704, 78.8868535524408, 50.16950217496375, 59.56764743604155,
    19.020429484306277, 61.335572740454325, 47.14515893344343, 141.75135923307818, 94.60620029962553,
    85.95794070476977, 34.07300576173523, 68.06189371516912, 637.9862061297893, 1817.2394155466848,
    1179.2532094169414, 1127.2743149568837, 431.51034284549826, 909.1060025135899, 3.7744320927984534,
    13.673707104881585, 9.899275012083132, 9.620186927095652, 3.8426065581251856, 9.96950217496375,
    3.305461575640406, 5.483035282745288, 2.1775737071048815, 4.215114560306594, 0.8206087101824266,
    3.732092798453359, 109.16732721121315, 179.5570323827936, 70.38970517158047, 136.0978305229613,
    27.027545809538527, 119.16713388110198, 1.2721433060967857, 2.4614001837260617, 1.1892568776289631,
    1.9844483610247092, 0.4691462290494881, 2.100143582306204, 1.4829869502174964, 1.9899951667472209,
    0.5070082165297245, 1.7956250375970633, 0.2056251946617602, 1.745867568873852, 0.05650072498791687,
    2.3618656355727405, 2.3053649105848235, 1.2829636137262992, 0.9995555685850794, 1.5150314161430642,
    0.7731271145480909, 7.4648139197680035, 6.691686805219913, 4.010677272036105, 2.612307566507693,
    3.303528274528758, 0.2739487675205413, 5.889753504108265, 5.615804736587724, 2.3244356612494683,
    2.1426251769710905, 1.4464475592073465, 4.739246012566457, 14.578395360077332, 9.839149347510874,
    9.413701584608935, 3.537059747455868, 8.550410826486225, 0.008119864668922184, 0.43286611889801835,
    0.4247462542290962, 0.16687837041055423, 0.17139889490813626, 0.10898985016916385, 0.06283228612856452,
    2.6573707104881583, 2.594538424359594, 1.219602938224228, 1.0596390454742999, 1.1120831319478008,
    0.14842919284678588, 3.8473658772353794, 3.6989366843885936, 1.4541605082183982, 1.3862277372859781,
    0.8018849685838569, 0.03542774287095215, 2.4474625422909617, 2.4120347994200095, 0.7745217539010397,
    0.9145812330586208, 0.3198646689221846, 1.552730787820203, 6.910681488641856, 5.357950700821653,
    3.615163570754227, 1.9072256165179793, 2.6702271628806185, 14.608536589568727, 34.83222477045747,
    20.223688180890715, 22.47901710732293, 7.17674504190757, 18.641837024143584, 0.009066988883518605,
    0.9185191396809959, 0.9094521507974755, 0.4368550481994018, 0.38905942883427047, 0.48375558240695804,
    0.0012985909686158003, 0.21708593995837092, 0.21578734898975546, 0.08167977375391729,
    0.08155386250705281, 0.06036340747305611, 116.32010633156113, 217.5905751570807, 101.27046882551957,
    162.87154200548844, 41.920624308665566, 136.4664572257129,
])
MAGPIE_SCALER_STDS = np.array([
    16.35781741152948, 20.189540126474725, 20.516298414514758, 16.816765336550194, 7.966591328222124,
    22.270791076753067, 21.802116630115243, 12.804546460581966, 24.756629388687983, 13.930306216047477,
    10.214535652334533, 27.801612936980938, 39.74031558353379, 54.269739685575814, 53.70466607591569,
    42.852342044453444, 20.78341194242935, 56.28783510219931, 563.8004405882157, 732.0722574247563,
    736.2122907972664, 606.351603075103, 272.62646060896407, 810.6156779688841, 3.0362262146833428,
    3.2075174256751606, 4.0633818989245665, 2.9738244769894764, 1.7805586029644034, 5.643243225066782,
    1.1994336274579853, 0.8939013979423364, 1.2297581799896975, 1.0066021334519983, 0.49129747526397105,
    1.4159553146070951, 31.754756468836774, 28.054241463256226, 38.16336054795611, 25.83485338379922,
    15.388376641904662, 39.67137484594156, 0.31988340032011076, 0.6833658037760536, 0.7464197945553585,
    0.4881349085029781, 0.3176591553643101, 0.8601748146737138, 0.5864801661863596, 0.10048913710210677,
    0.5836289120986499, 0.2811748167435902, 0.2468696279341553, 0.5007375747433073, 0.37237566669029587,
    1.7235989187720187, 1.7058836077743305, 1.1558859351244697, 0.7677842566598179, 1.9203550253462733,
    2.1289400248865182, 3.5326064169848332, 3.708508303762512, 2.8709941136664567, 1.6110681295257014,
    4.310192504023775, 1.6644182118209292, 6.228287671164213, 6.1200848808512305, 3.1986202996110302,
    2.4492978142248867, 4.030497343977163, 3.662028270049814, 6.8192125550358345, 6.614243783887738,
    4.334987449618594, 2.568319610320196, 5.9494890200106925, 0.08974370432893491, 0.4954725441517777,
    0.494304434278516, 0.2309340434963803, 0.2072873961103969, 0.31162647950590266, 0.39805702757060923,
    1.8111691089355726, 1.7973395144505941, 0.9486995373104102, 0.7538753151875139, 1.5233177017753785,
    0.7952606701778913, 3.711190225170556, 3.638721437232604, 1.7171165424006831, 1.4307904413917036,
    2.1047820817622904, 0.49193748323158065, 4.064840532426175, 4.035286619587313, 1.4858577214526643,
    1.5799117659864677, 1.6130080156145745, 1.555249156140194, 4.776932951077492, 4.569790780459629,
    2.224617778217326, 1.7217507416156546, 2.5969733650703763, 7.215001918238936, 19.252513469778584,
    18.775394044177858, 9.447222764774764, 6.7467931836261235, 11.106825644766616, 0.27206794253092115,
    1.6449321034573106, 1.6236282792648686, 0.8506917026741503, 0.7020945355184042, 1.2281895279350408,
    0.04134438177238229, 0.5508855867341717, 0.5486095551438679, 0.24239297524046477, 0.2127779137935831,
    0.3036750942874694, 80.06063945615361, 21.345794811194104, 80.16475677581042, 52.58533928558554,
    35.40836791039412, 85.980205895116,
])


def scale_composition_fingerprints(fps: np.ndarray) -> np.ndarray:
    """CDVAE's CompScaler: standardise, and NaN (missing Magpie data) becomes 0."""
    scaled = (np.asarray(fps, float) - MAGPIE_SCALER_MEANS) / MAGPIE_SCALER_STDS
    return np.where(np.isnan(scaled), 0.0, scaled)


def matminer_available() -> bool:
    try:
        import matminer  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _featurizers() -> tuple[Any, Any]:
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops"), ElementProperty.from_preset("magpie")


def fingerprints(structure: Structure) -> tuple[np.ndarray, np.ndarray]:
    """CDVAE fingerprints: mean CrystalNN "ops" site fingerprint (61) and Magpie composition (132).

    Needs matminer (not a chemgen dependency: every matminer release pins pandas<3).
    """
    site_fp, comp_fp = _featurizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CrystalNN warns about missing oxidation states on every site
        struct = np.mean([site_fp.featurize(structure, i) for i in range(len(structure))], axis=0)
        comp = np.asarray(comp_fp.featurize(structure.composition), float)
    return struct, comp


def coverage(struct_fps: np.ndarray, comp_fps: np.ndarray, gt_struct_fps: np.ndarray, gt_comp_fps: np.ndarray,
             n_generated: int | None = None, dataset: str = "mp20") -> dict[str, float]:
    """CDVAE's compute_cov: COV-R, COV-P and the mean minimum distances (AMSD / AMCD).

    ``struct_fps``/``comp_fps`` are the generated samples whose fingerprints exist; COV-P divides by
    ``n_generated`` (all generated samples, invalid ones included), as CDVAE does.
    """
    from scipy.spatial.distance import cdist

    cut = COV_CUTOFFS[dataset]
    n_generated = len(struct_fps) if n_generated is None else n_generated
    struct_d = cdist(np.asarray(struct_fps, float), np.asarray(gt_struct_fps, float))
    comp_d = cdist(scale_composition_fingerprints(comp_fps), scale_composition_fingerprints(gt_comp_fps))
    recall_s, precision_s = struct_d.min(axis=0), struct_d.min(axis=1)
    recall_c, precision_c = comp_d.min(axis=0), comp_d.min(axis=1)
    return {
        "cdvae/cov_recall": float(np.mean((recall_s <= cut["struct"]) & (recall_c <= cut["comp"]))),
        "cdvae/cov_precision": float(np.sum((precision_s <= cut["struct"]) & (precision_c <= cut["comp"]))
                                     / max(n_generated, 1)),
        "cdvae/amsd_recall": float(recall_s.mean()), "cdvae/amsd_precision": float(precision_s.mean()),
        "cdvae/amcd_recall": float(recall_c.mean()), "cdvae/amcd_precision": float(precision_c.mean()),
    }


# ============================================================================ the entry point
@dataclass
class CrystalScores:
    """Metrics (flat, protocol-prefixed keys), per-sample records and notes on what was skipped."""

    metrics: dict[str, float]
    records: list[CrystalRecord]
    notes: dict[str, str] = field(default_factory=dict)
    gt_densities: np.ndarray | None = None
    gt_n_elements: np.ndarray | None = None

    def as_dict(self) -> dict[str, float]:
        return dict(self.metrics)

    def to_frame(self) -> Any:
        """Per-sample records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([{**vars(r), "valid": r.valid} for r in self.records])


def _as_reference_set(references: ReferenceSet | Iterable[Any] | None) -> ReferenceSet | None:
    if references is None or isinstance(references, ReferenceSet):
        return references
    return ReferenceSet.from_structures(references)


def score_crystals(
    systems: Sequence[AtomicSystem | Structure | None],
    references: ReferenceSet | Iterable[AtomicSystem | Structure] | None = None,
    preset: str = "adit",
    validity: Validity = "cdvae",
    ground_truth: Sequence[AtomicSystem | Structure] | None = None,
    compute_coverage: bool = False,
    stability: bool = False,
    hull: MP20Hull | None = None,
    chgnet_references: ElementalReferences | None = None,
    sigma: StabilitySigma | float | None = None,
    relax_fmax: float = 0.1,
    relax_steps: int = 200,
    relax_workers: int = 1,
    relax_budget_s: float | None = None,
    dataset: str = "mp20",
    seed: int = 0,
) -> CrystalScores:
    """Score generated crystals.

    Parameters
    ----------
    systems : generated samples; ``None`` marks a sample the model failed to produce (invalid)
    references : known structures for novelty: the training split, as the published models check
        (`chemgen.scoring.report.training_references`); a `ReferenceSet` reuses its parsed and
        reduced structures across calls and carries the formulas of rows without coordinates
    preset : uniqueness/novelty rules (`MATCHER_PRESETS`): "adit" or "pymatgen"
    validity : "cdvae" (smact 2.2.1) or "adit" (smact 2.6, the lattice-angle rule, the 1e7
        oxidation-combination cap, and an unconstructed crystal's composition counted invalid)
    ground_truth : reference distribution for Wasserstein distances and coverage (CDVAE: test set)
    compute_coverage : COV-R/COV-P (needs matminer and ``ground_truth``)
    stability : relax valid samples with CHGNet, many at once (`chemgen.scoring.relax`), and score
        E_hull on the MP-20 hull; set ``torch.set_num_threads`` before calling (the library leaves it
        alone) or use ``relax_workers`` processes of one thread each
    hull, chgnet_references, sigma : defaults are `load_mp20_hull()`, `load_chgnet_references()` and
        `load_chgnet_sigma()` (CHGNet's held-out error, for the expected stable count)
    relax_steps, relax_budget_s : FIRE step cap per structure and wall-time budget for all of them

    Returns
    -------
    CrystalScores; rates are fractions of all samples unless the key says otherwise.
    """
    if preset not in MATCHER_PRESETS:
        raise UsageError(f"unknown matcher preset {preset!r}; choose from {sorted(MATCHER_PRESETS)}")
    records, structures = [], []
    for i, system in enumerate(systems):
        record, structure = assess_validity(i, system, validity)
        records.append(record)
        structures.append(structure)
    n = len(records)
    notes: dict[str, str] = {}
    metrics: dict[str, float] = {"n_samples": float(n)}
    if n == 0:
        return CrystalScores(metrics, records, {"empty": "no samples"})

    fps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if compute_coverage:
        if not matminer_available():
            notes["coverage"] = "skipped: matminer is not installed"
        elif ground_truth is None:
            notes["coverage"] = "skipped: no ground_truth given"
        else:
            fps = _sample_fingerprints(records, structures)
            metrics["cdvae/n_fingerprint_failed"] = float(sum(r.fingerprint_failed for r in records))

    metrics[f"{validity}/struct_valid"] = float(np.mean([r.struct_valid for r in records]))
    metrics[f"{validity}/comp_valid"] = float(np.mean([r.comp_valid for r in records]))
    metrics[f"{validity}/valid"] = float(np.mean([r.valid for r in records]))
    valid = [r for r in records if r.valid]
    metrics[f"{validity}/n_valid"] = float(len(valid))
    if valid:
        metrics.update(_uniqueness_novelty(valid, structures, _as_reference_set(references), preset, notes))

    gt_density = gt_nelem = None
    if ground_truth is not None:
        gt = [to_structure(s) for s in ground_truth]
        gt_density = np.array([s.density for s in gt])
        gt_nelem = np.array([len(s.composition.elements) for s in gt])
        metrics.update(wasserstein_metrics([r.density for r in valid], [r.n_elements for r in valid],
                                           gt_density, gt_nelem, seed=seed))
        if fps:
            metrics.update(_coverage_against(fps, gt, n, dataset, notes))

    if stability:
        metrics.update(_stability_metrics(records, structures, preset, hull, chgnet_references, sigma,
                                          relax_fmax, relax_steps, references is not None, relax_workers,
                                          relax_budget_s))
    return CrystalScores(metrics, records, notes, gt_density, gt_nelem)


def _sample_fingerprints(records: list[CrystalRecord],
                         structures: list[Structure | None]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Fingerprints of every constructed sample; a failure is flagged on its record."""
    fps = {}
    for r, s in zip(records, structures, strict=True):
        if s is None:
            continue
        try:
            fps[r.index] = fingerprints(s)
        except (ValueError, IndexError, RuntimeError) as exc:
            # reported apart; validity stays what it is (CDVAE/ADiT would also call this invalid)
            r.fingerprint_failed = True
            r.reason = "; ".join(filter(None, [r.reason, f"CrystalNN fingerprint failed: {exc}"]))
    return fps


def _coverage_against(fps: dict[int, tuple[np.ndarray, np.ndarray]], gt: list[Structure], n_generated: int,
                      dataset: str, notes: dict[str, str]) -> dict[str, float]:
    gt_fps = []
    for s in gt:
        try:
            gt_fps.append(fingerprints(s))
        except (ValueError, IndexError, RuntimeError):
            pass  # a reference without a fingerprint drops out
    if len(gt_fps) < len(gt):
        notes["coverage_ground_truth"] = f"{len(gt) - len(gt_fps)} ground-truth fingerprints failed"
    return coverage(np.array([f[0] for f in fps.values()]), np.array([f[1] for f in fps.values()]),
                    np.array([f[0] for f in gt_fps]), np.array([f[1] for f in gt_fps]),
                    n_generated=n_generated, dataset=dataset)


def _uniqueness_novelty(valid: list[CrystalRecord], structures: list[Structure | None],
                        references: ReferenceSet | None, preset: str, notes: dict[str, str]) -> dict[str, float]:
    """Uniqueness (and novelty when references are given) among valid samples; sets the record flags.

    ADiT's rules (``per_group``) judge novelty only for the first member of each unique group and
    divide by the number of groups; otherwise every valid sample is judged and rates are over valid.
    "Undetermined" samples (see `ReferenceSet`) count as neither novel nor known.
    """
    reduced = [_Reduced(structures[r.index]) for r in valid]  # reduced once, shared by both scores
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


def _stability_metrics(records: list[CrystalRecord], structures: list[Structure | None], preset: str,
                       hull: MP20Hull | None, chgnet_references: ElementalReferences | None,
                       sigma: StabilitySigma | float | None, fmax: float, steps: int, have_novelty: bool,
                       relax_workers: int, relax_budget_s: float | None) -> dict[str, float]:
    """Batched CHGNet relaxation of every valid sample, E_hull on the MP-20 hull; the metastable rate
    (headline), hard and expected stable rates and (M)S.U.N. over all samples (`hull.stability_metrics`)."""
    from chemgen.scoring.hull import (
        load_chgnet_references,
        load_chgnet_sigma,
        load_mp20_hull,
        stability_metrics,
    )
    from chemgen.scoring.relax import relax_and_score

    hull = hull or load_mp20_hull()
    chgnet_references = chgnet_references or load_chgnet_references()
    sigma = sigma if sigma is not None else load_chgnet_sigma(references=chgnet_references)
    valid = [r for r in records if r.valid]
    results = relax_and_score([structures[r.index] for r in valid], hull, chgnet_references, fmax=fmax, steps=steps,
                              workers=relax_workers, time_budget_s=relax_budget_s, progress=len(valid) >= 20)
    for r, result in zip(valid, results, strict=True):
        r.e_form_per_atom, r.e_above_hull, r.stability_error = result.e_form_per_atom, result.e_above_hull, result.error
        r.relax_status = result.status
    e_hull = np.array([np.nan if r.e_above_hull is None else r.e_above_hull for r in records])
    unique_novel = [bool(r.unique) and r.novelty == NOVEL for r in records] if have_novelty else None
    metrics = stability_metrics(e_hull, len(records), sigma, unique_novel, sun_prefix=f"chgnet_mp20+{preset}")
    metrics["chgnet_mp20/n_converged"] = float(sum(r.relax_status == "converged" for r in valid))
    return metrics


# ============================================================================ plots
def plot_crystal_scores(scores: CrystalScores, out_dir: str | Path) -> list[Path]:
    """Save PNG histograms (E_hull, density vs ground truth, number of elements); returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    e_hull = np.array([r.e_above_hull for r in scores.records if r.e_above_hull is not None], float)
    e_hull = e_hull[np.isfinite(e_hull)]
    if e_hull.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.hist(e_hull, bins=40, color="tab:blue")
        for x, label in ((0.0, "stable"), (0.1, "metastable")):
            ax.axvline(x, color="k", ls="--", lw=0.8)
            ax.text(x, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=7, va="top")
        ax.set(xlabel="E above MP-20 hull (eV/atom)", ylabel="samples", title="CHGNet-relaxed stability")
        save(fig, "e_above_hull.png")

    density = np.array([r.density for r in scores.records if r.valid and r.density is not None], float)
    if density.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        bins = np.linspace(0, max(density.max(), *(scores.gt_densities if scores.gt_densities is not None
                                                    else [0.0])), 50)
        ax.hist(density, bins=bins, density=True, alpha=0.6, label="generated (valid)")
        if scores.gt_densities is not None:
            ax.hist(scores.gt_densities, bins=bins, density=True, alpha=0.6, label="reference")
        ax.set(xlabel="density (g/cm$^3$)", ylabel="probability density")
        ax.legend()
        save(fig, "density.png")

    n_elem = np.array([r.n_elements for r in scores.records if r.valid and r.n_elements], int)
    if n_elem.size:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        top = max(n_elem.max(), scores.gt_n_elements.max() if scores.gt_n_elements is not None else 0)
        edges = np.arange(0.5, top + 1.5)
        ax.hist(n_elem, bins=edges, density=True, alpha=0.6, label="generated (valid)")
        if scores.gt_n_elements is not None:
            ax.hist(scores.gt_n_elements, bins=edges, density=True, alpha=0.6, label="reference")
        ax.set(xlabel="number of elements", ylabel="fraction")
        ax.legend()
        save(fig, "num_elements.png")
    return written

"""Validity of generated crystals: CDVAE's structural check and SMACT charge balance, as CDVAE and ADiT ran them.

* ``cdvae`` — CDVAE ``scripts/compute_metrics.py`` / ``eval_utils.py``: every interatomic distance >= 0.5 A
  under periodic boundaries and volume >= 0.1 A^3 (structural), SMACT charge balance as smact 2.2.1 computed
  it with SMACT14 oxidation states (compositional).
* ``adit`` — ADiT ``src/eval/crystal.py``: smact 2.6; a crystal with a lattice angle outside (50, 130)
  degrees or a volume below 0.1 A^3 is not constructed, so its composition is invalid too; more than 1e7
  oxidation-state combinations make a composition invalid.

One bad structure never raises: it gets a `CrystalRecord` that is invalid, with its reason.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from chemgen.atoms import SYMBOLS, AtomicSystem
from chemgen.errors import ChemgenError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pymatgen.core import Structure

Validity = Literal["cdvae", "adit"]


DISTANCE_CUTOFF = 0.5  # Angstrom, CDVAE structure_validity


MIN_VOLUME = 0.1  # Angstrom^3


ADIT_ANGLE_RANGE = (50.0, 130.0)  # degrees, exclusive (ADiT array_dict_to_crystal, from FlowMM)


ADIT_MAX_OX_COMBINATIONS = 1e7


MAX_ATOMIC_NUMBER = 104  # ADiT: atom types outside 1..104 are invalid


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

"""Each candidate source on a small real system (Li-Mn-O), and the bad requests that must fail before anything
runs."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Structure

from chemgen.errors import UsageError
from chemgen.screening import random_search, substitution, uploads
from chemgen.screening.prototypes import decorate
from chemgen.screening.request import ScreeningRequest

LI_MN_O = ScreeningRequest.parse("Li-Mn-O")


# ----------------------------------------------------------------------------- the request
def test_a_request_names_real_elements_a_formula_of_them_and_a_cell_that_can_hold_them():
    assert LI_MN_O.elements == ("Li", "Mn", "O") and LI_MN_O.system == "Li-Mn-O"
    with pytest.raises(UsageError, match="'Xx' is not an element symbol"):
        ScreeningRequest.parse("Li-Xx-O")
    with pytest.raises(UsageError, match="made of Fe-Li-O, not of the system Li-Mn-O"):
        ScreeningRequest.parse("Li-Mn-O", formula="LiFeO2")
    with pytest.raises(UsageError, match="at most 6"):
        ScreeningRequest.parse("Li-Na-K-Rb-Cs-Mn-O")
    with pytest.raises(UsageError, match="is not a chemical formula"):
        ScreeningRequest.parse("Li-Mn-O", formula="Li(Mn2O4")
    assert LI_MN_O.holds(["Li", "Mn", "O", "O"]) and not LI_MN_O.holds(["Mn", "O"])   # all of the elements
    assert not LI_MN_O.holds(["Li", "Mn", "O"] * 7, 21)


def test_compositions_are_charge_balanced_with_icsd_oxidation_states():
    compositions = LI_MN_O.compositions()
    formulas = {(c["Li"], c["Mn"], c["O"]) for c, _ in compositions}
    assert {(1, 1, 2), (2, 1, 3), (1, 2, 4)} & formulas == {(1, 1, 2), (2, 1, 3)}   # LiMn2O4 needs Mn 3.5
    for counts, states in compositions:
        assert sum(counts[e] * states[e] for e in counts) == 0 and states["O"] == -2 and states["Mn"] > 0
        assert sum(counts.values()) <= 20
    spinel = ScreeningRequest.parse("Li-Mn-O", formula="LiMn2O4").compositions()
    assert [c for c, _ in spinel] == [{"Li": 1, "Mn": 2, "O": 4}, {"Li": 2, "Mn": 4, "O": 8}]
    assert spinel[0][1]["Mn"] == pytest.approx(3.5)


# ----------------------------------------------------------------------------- substitution
def test_substitution_replaces_ions_of_real_prototypes_most_probable_first(prototypes):
    run = substitution.generate(LI_MN_O, 10, prototypes=prototypes)
    assert run.source == "substitution" and run.candidates
    scores = [c.score for c in run.candidates]
    assert scores == sorted(scores, reverse=True) and all(s > substitution.DEFAULT_THRESHOLD for s in scores)
    by_prototype = {c.extra["prototype"]: c for c in run.candidates}
    assert "mp-37620" not in by_prototype    # LiMnO2 is already Li-Mn-O: nothing to substitute
    assert {"mp-25411", "mp-759533"} <= set(by_prototype)   # Ni3+ and Na+ replaced
    # LiCrO2's cell with Cr3+ -> Mn3+ is LiNiO2's with Ni3+ -> Mn3+ (one ordered rock salt): made once, relaxed once
    assert "mp-756362" not in by_prototype and "1 gave a structure made already" in run.note
    for candidate in run.candidates:
        structure = candidate.structure.to_pymatgen()
        assert LI_MN_O.holds(candidate.structure.symbols, len(structure))
        assert substitution.charge_balanced(_decorated(structure))
    # the volume follows the ionic radii: Mn3+ (0.645 A) is larger than Ni3+ (0.56 A), Na+ than Li+ the other way
    prototype = {p.material_id: p.structure for p in prototypes}
    grown = by_prototype["mp-25411"].structure.to_pymatgen().volume / prototype["mp-25411"].volume
    shrunk = by_prototype["mp-759533"].structure.to_pymatgen().volume / prototype["mp-759533"].volume
    assert 1.0 < grown < 1.2 and 0.7 < shrunk < 1.0
    assert "Ni3+->Mn3+" in by_prototype["mp-25411"].origin


def _decorated(structure: Structure) -> Structure:
    decorate(structure)
    return structure


def test_a_system_with_no_prototype_to_substitute_into_is_a_clear_error(prototypes):
    with pytest.raises(UsageError, match="no MP-20 training structure of 2 ionic elements substitutes into He-Ne"):
        substitution.generate(ScreeningRequest.parse("He-Ne"), 5, prototypes=prototypes)


# ----------------------------------------------------------------------------- random symmetric structures
def test_random_structures_are_reproducible_crystals_of_the_system():
    run = random_search.generate(LI_MN_O, 6, seed=3)
    again = random_search.generate(LI_MN_O, 6, seed=3)
    assert len(run.candidates) == 6 and run.attempts >= 6
    assert [c.origin for c in run.candidates] == [c.origin for c in again.candidates]   # the seed decides
    for candidate in run.candidates:
        structure = candidate.structure.to_pymatgen()
        assert LI_MN_O.holds(candidate.structure.symbols, len(structure))
        distances = structure.distance_matrix[np.triu_indices(len(structure), 1)]
        assert distances.min() > 0.5


def test_random_structures_keep_to_the_drawn_space_group():
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pymatgen.symmetry.groups import SpaceGroup

    order = lambda number: SpaceGroup.from_int_number(number).order  # noqa: E731
    run = random_search.generate(LI_MN_O, 8, seed=0)
    for candidate in run.candidates:
        drawn = candidate.extra["drawn_space_group"]
        found = SpacegroupAnalyzer(candidate.structure.to_pymatgen(), symprec=0.01).get_space_group_number()
        # the structure has at least the drawn symmetry: its group is the drawn one or one of its supergroups
        assert found == drawn or order(drawn) <= order(found), (drawn, found)


def test_a_system_too_large_for_its_cells_is_a_clear_error():
    cramped = ScreeningRequest.parse("Li-Mn-O", max_atoms=3)
    with pytest.raises(UsageError, match="no charge-balanced composition of at most 3 atoms"):
        random_search.generate(cramped, 2)


# ----------------------------------------------------------------------------- uploads
def test_an_uploaded_cif_is_a_candidate_and_a_bad_one_stops_everything(limno2_cif, tmp_path):
    good = tmp_path / "mine.cif"
    good.write_text(limno2_cif)
    run = uploads.generate(LI_MN_O, [good])
    assert [c.source for c in run.candidates] == ["upload"] and "mine.cif" in run.candidates[0].origin
    partial = tmp_path / "partial.cif"
    partial.write_text(limno2_cif.replace("0.25010000  1\n", "0.25010000  0.5\n"))   # the Li0 site half occupied
    with pytest.raises(UsageError, match="partial.cif.*(disordered|partial occupancy)"):
        uploads.generate(LI_MN_O, [good, partial])
    absurd = tmp_path / "absurd.cif"
    absurd.write_text(_with_cell_length(limno2_cif, 1e6))
    with pytest.raises(Exception, match="absurd.cif"):
        uploads.generate(LI_MN_O, [absurd])
    with pytest.raises(UsageError, match="is not a compound of Fe-Li-O"):
        uploads.generate(ScreeningRequest.parse("Li-Fe-O"), [good])


def _with_cell_length(cif: str, length: float) -> str:
    lines = []
    for line in cif.splitlines():
        if line.startswith("_cell_length_a"):
            line = f"_cell_length_a   {length}"
        lines.append(line)
    return "\n".join(lines) + "\n"

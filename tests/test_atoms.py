import numpy as np
import pytest

from chemgen.atoms import AtomicSystem, InvalidSystemError

NACL_CELL = np.diag([5.64, 5.64, 5.64])


def nacl():
    return AtomicSystem.crystal([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], NACL_CELL, dataset="mp20", material_id="NaCl")


def water():
    return AtomicSystem.molecule([8, 1, 1], [[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]],
                                 dataset="qm9", smiles="O", bonds=[[0, 1, 1], [0, 2, 1]])


def test_crystal_keeps_cartesian_and_fractional_consistent():
    s = nacl()
    assert s.pbc and s.num_atoms == 2
    np.testing.assert_allclose(s.pos[1], [2.82, 2.82, 2.82])
    np.testing.assert_allclose(s.lattice_parameters, [5.64, 5.64, 5.64, 90, 90, 90])
    assert s.volume == pytest.approx(5.64**3)


def test_molecule_has_zero_cell_and_fractional_coordinates():
    s = water()
    assert not s.pbc and s.volume == 0.0
    assert np.all(s.cell == 0) and np.all(s.frac_coords == 0)
    assert s.formula == "H2O"


def test_record_is_immutable_and_replace_recomputes_fractional():
    s = nacl()
    with pytest.raises(ValueError):
        s.pos[0, 0] = 1.0  # read-only array
    bigger = s.replace(cell=NACL_CELL * 2, pos=s.pos * 2)
    np.testing.assert_allclose(bigger.frac_coords, s.frac_coords, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"atomic_numbers": [6, 1], "pos": [[0, 0, 0], [np.nan, 0, 0]]}, "NaN"),
        ({"atomic_numbers": [6, 1], "pos": [[0, 0, 0]]}, "2 atomic numbers but 1 positions"),
        ({"atomic_numbers": [0], "pos": [[0, 0, 0]]}, "atomic numbers must lie"),
        ({"atomic_numbers": [], "pos": np.zeros((0, 3))}, "at least one atom"),
        ({"atomic_numbers": [6], "pos": [[0, 0]]}, "shape"),
        ({"atomic_numbers": [6], "pos": [[0, 0, 0]], "pbc": True}, "cell lengths"),
        # physical limits (docs/guides/structures.md, "What a record accepts")
        ({"atomic_numbers": [6] * 1001, "pos": np.zeros((1001, 3))}, "1001 atoms, over the limit of 1000"),
        ({"atomic_numbers": [6], "pos": [[1e300, 0, 0]]}, "coordinate of 1e\\+300 A is beyond the limit"),
        ({"atomic_numbers": [6], "pos": [[0, 0, 0]], "pbc": True, "cell": np.diag([4.0, 4.0, -4.0])}, "right-handed"),
        ({"atomic_numbers": [6], "pos": [[0, 0, 0]], "pbc": True, "cell": [[4, 0, 0], [0, 4, 0], [4, 4, 0.01]]},
         "nearly coplanar"),
        ({"atomic_numbers": [6], "pos": [[0, 0, 0]], "pbc": True, "cell": np.diag([4.0, 1e4, 4.0])}, "lie outside"),
        ({"atomic_numbers": [6], "pos": [[0, 0, 0]], "pbc": True, "cell": np.eye(3) * 4,
          "frac_coords": [[1e3, 0, 0]]}, "fractional coordinate"),
        ({"atomic_numbers": [6, 6], "pos": np.zeros((2, 3)), "bonds": [[0, 2, 1]]}, "bond indices"),
    ],
)
def test_invalid_systems_raise_clear_errors(kwargs, message):
    with pytest.raises(InvalidSystemError, match=message):
        AtomicSystem(**kwargs)


def test_pymatgen_round_trip_crystal_and_molecule(mp20_systems, qm9_systems):
    for s in mp20_systems[:10]:
        structure = s.to_pymatgen()
        assert structure.lattice.volume == pytest.approx(s.volume)
        assert AtomicSystem.from_pymatgen(structure).allclose(s, atol=1e-6)
    for m in qm9_systems[:10]:
        assert AtomicSystem.from_pymatgen(m.to_pymatgen()).allclose(m, atol=1e-6)


def test_ase_round_trip_keeps_metadata(mp20_systems, qm9_systems):
    for s in [*mp20_systems[:5], *qm9_systems[:5]]:
        back = AtomicSystem.from_ase(s.to_ase())
        assert back.allclose(s, atol=1e-6)
        assert back.dataset == s.dataset and back.material_id == s.material_id


def test_rdkit_round_trip_keeps_bonds():
    s = water()
    mol = s.to_rdkit(sanitize=True)
    assert mol.GetNumAtoms() == 3 and mol.GetNumBonds() == 2
    back = AtomicSystem.from_rdkit(mol)
    assert back.allclose(s, atol=1e-6)
    np.testing.assert_array_equal(back.bonds, s.bonds)
    with pytest.raises(InvalidSystemError, match="crystal"):
        nacl().to_rdkit()


def test_periodic_images_are_kept_not_wrapped_and_distances_use_minimum_image():
    # Two atoms on either side of a cell face: 9.8 A apart in Cartesian space,
    # 0.2 A apart through the periodic boundary.
    s = AtomicSystem.crystal([6, 6], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]], np.eye(3) * 10.0)
    structure = s.to_pymatgen()
    assert np.linalg.norm(s.pos[0] - s.pos[1]) == pytest.approx(9.8)
    assert structure.get_distance(0, 1) == pytest.approx(0.2, abs=1e-9)
    outside = AtomicSystem.crystal([6], [[1.25, -0.5, 0.5]], np.eye(3) * 4.0)
    for back in (AtomicSystem.from_ase(outside.to_ase()), AtomicSystem.from_pymatgen(outside.to_pymatgen())):
        np.testing.assert_allclose(back.frac_coords, outside.frac_coords, atol=1e-9)

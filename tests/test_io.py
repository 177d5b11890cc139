import numpy as np
import pytest

from chemgen import io
from chemgen.io import StructureFileError


@pytest.mark.parametrize("suffix", [".cif", ".extxyz"])
def test_crystal_files_round_trip(tmp_path, mp20_systems, suffix):
    path = io.write(tmp_path / f"crystals{suffix}", mp20_systems)
    back = io.read(path)
    assert len(back) == len(mp20_systems)
    for a, b in zip(mp20_systems, back):
        assert b.pbc
        assert b.allclose(a, atol=1e-6), (a, b)
        np.testing.assert_allclose(b.lattice_parameters, a.lattice_parameters, atol=1e-6)


@pytest.mark.parametrize("suffix", [".sdf", ".xyz", ".extxyz"])
def test_molecule_files_round_trip(tmp_path, qm9_systems, suffix):
    path = io.write(tmp_path / f"molecules{suffix}", qm9_systems)
    back = io.read(path)
    assert len(back) == len(qm9_systems)
    for a, b in zip(qm9_systems, back):
        assert not b.pbc
        assert b.allclose(a, atol=1e-6)


def test_cif_keeps_material_ids(tmp_path, mp20_systems):
    back = io.read(io.write(tmp_path / "x.cif", mp20_systems[:3]))
    assert [b.material_id for b in back] == [a.material_id for a in mp20_systems[:3]]


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("bad.cif", "data_x\n_cell_length_a 3\nloop_\n_atom_site_label\nNa1\n", "malformed CIF|no structure"),
        ("empty.cif", "", "empty"),
        ("bad.xyz", "3\n\nC 0 0\n", "malformed extended XYZ"),
        ("nan.xyz", "1\n\nC nan 0 0\n", "NaN"),
        ("bad.sdf", "garbage\n$$$$\n", "not a valid MOL block"),
        ("x.pdbqt", "ATOM", "unknown file extension"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(StructureFileError, match=problem) as info:
        io.read(path)
    assert str(path) in str(info.value)


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(StructureFileError, match="no such file"):
        io.read(tmp_path / "absent.cif")
    big = tmp_path / "big.xyz"
    big.write_text("1\n\nC 0 0 0\n")
    with pytest.raises(StructureFileError, match="over the"):
        io.read(big, max_bytes=4)


def test_failed_write_leaves_existing_file_untouched(tmp_path, qm9_systems, mp20_systems):
    target = tmp_path / "out.cif"
    io.write(target, mp20_systems[:2])
    before = target.read_bytes()
    # A molecule cannot be written to CIF: the write fails half-way through the list.
    with pytest.raises(StructureFileError, match="molecule"):
        io.write(target, [mp20_systems[0], qm9_systems[0]])
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.cif"]  # no temporary left behind

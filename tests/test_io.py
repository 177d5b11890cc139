import numpy as np
import pytest

from chemgen import io
from chemgen.io import StructureFileError


@pytest.mark.parametrize("suffix", [".cif", ".extxyz", ".csv", ".csv.gz"])
def test_crystal_files_round_trip(tmp_path, mp20_systems, suffix):
    path = io.write(tmp_path / f"crystals{suffix}", mp20_systems)
    back = io.read(path)
    assert len(back) == len(mp20_systems)
    for a, b in zip(mp20_systems, back):
        assert b.pbc
        assert b.allclose(a, atol=1e-6), (a, b)
        np.testing.assert_allclose(b.lattice_parameters, a.lattice_parameters, atol=1e-6)


@pytest.mark.parametrize("suffix", [".sdf", ".xyz", ".extxyz", ".csv"])
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


def test_a_structure_csv_reads_row_by_row(tmp_path, mp20_systems, qm9_systems):
    import pandas as pd

    path = io.write(tmp_path / "crystals.csv", mp20_systems[:4])
    table = pd.read_csv(path)
    assert list(table.columns) == ["material_id", "formula", "cif"]
    table.loc[1, "cif"] = "data_broken\n_cell_length_a 3\n"
    table.loc[2, "cif"] = None
    table.to_csv(path, index=False)
    records = io.read_records(path)
    assert [isinstance(r, StructureFileError) for r in records] == [False, True, True, False]
    assert "row 2" in str(records[1]) and "row 3: empty cif field" in str(records[2])
    with pytest.raises(StructureFileError, match="row 2"):  # a converter must not drop rows silently
        io.read(path)
    with pytest.raises(StructureFileError, match="holds crystals or molecules, not both"):
        io.write(tmp_path / "mixed.csv", [mp20_systems[0], qm9_systems[0]])
    (tmp_path / "nocol.csv").write_text("a,b\n1,2\n")
    with pytest.raises(StructureFileError, match="'cif' or an 'xyz' column"):
        io.read_records(tmp_path / "nocol.csv")


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

import re

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
        ("bad.xyz", "3\n\nC 0 0\n", "announces 3 atoms but only 1 atom lines follow"),
        ("short.xyz", "1\n\nC 0 0\n", "malformed extended XYZ"),
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


# ---------------------------------------------------------------------------- hostile input (issue 11)
def _extxyz_text(systems) -> str:
    import io as text_io

    handle = text_io.StringIO()
    io.write_extxyz(handle, systems)
    return handle.getvalue()


def test_one_bad_record_spoils_only_itself_in_every_multi_record_format(tmp_path, qm9_systems, mp20_systems):
    import numpy as np

    molecules = qm9_systems[:7]
    # SDF: record 6 of 7 with a NaN coordinate
    sdf = io.write(tmp_path / "m.sdf", molecules).read_text().split("$$$$\n")
    lines = sdf[5].splitlines()
    atom = next(i for i, line in enumerate(lines) if line.startswith("M  V30 1 "))
    fields = lines[atom].split()
    fields[4] = "nan"
    lines[atom] = " ".join(fields)
    sdf[5] = "\n".join(lines) + "\n"
    (tmp_path / "bad.sdf").write_text("$$$$\n".join(sdf))
    # XYZ: frame 6 of 7 with a NaN coordinate
    frames = [_extxyz_text([m]) for m in molecules]
    frames[5] = frames[5].replace(frames[5].splitlines()[2].split()[1], "nan", 1)
    (tmp_path / "bad.xyz").write_text("".join(frames))
    # CIF: block 2 of 3 with a cell length of 1e9 A
    cif = io.write(tmp_path / "c.cif", mp20_systems[:3]).read_text().split("data_")
    cif[2] = cif[2].replace("_cell_length_a", "_cell_length_a 999999999\n#", 1)
    (tmp_path / "bad.cif").write_text("data_".join(cif))
    for name, bad in (("bad.sdf", 5), ("bad.xyz", 5), ("bad.cif", 1)):
        records = io.read_records(tmp_path / name)
        failed = [i for i, r in enumerate(records) if isinstance(r, io.StructureFileError)]
        assert failed == [bad], (name, records)
        assert f"{bad + 1}" in str(records[bad]) and str(tmp_path / name) in str(records[bad])
        with pytest.raises(io.StructureFileError):   # reading the whole file still fails on it
            io.read(tmp_path / name)
    good = io.read_records(tmp_path / "bad.xyz")[0]
    assert np.allclose(good.pos, molecules[0].pos, atol=1e-6)


@pytest.mark.parametrize("content, problem", [
    ("2\nc\nC 0 0 0\nH 0 0 1\n1000000000000\n", "atom count of 1000000000000 lies outside 1..1000"),
    ("2\nc\nC 0 0 0\nH 0 0 1\n3\n", "announces 3 atoms but only 0 atom lines follow"),
    ('2\nLattice="4 0 0 0 4 1e309 0 0 4" Properties=species:S:1:pos:R:3 pbc="T T T"\nC 0 0 0\nH 0 0 1\n',
     "NaN or infinite"),
    ("1\nProperties=species:S:999999999:pos:R:3\nC 0 0 0\n", "not a small whole number"),
    ("1\n\nC 1e300 0 0\n", "beyond the limit"),
])
def test_hostile_xyz_frames_get_clear_errors_at_once(tmp_path, content, problem):
    import time

    path = tmp_path / "h.xyz"
    path.write_text(content)
    start = time.perf_counter()
    records = io.read_records(path)
    assert time.perf_counter() - start < 5
    errors = [r for r in records if isinstance(r, io.StructureFileError)]
    assert len(errors) == 1 and re.search(problem, str(errors[0])) and str(path) in str(errors[0])


@pytest.mark.parametrize("field, value, problem", [
    ("_cell_length_b", "999999999", "outside the physical range"),
    ("_cell_length_a", "-4.1", "outside the physical range"),
    ("_cell_angle_gamma", "1e9", "outside the physical range"),
    ("_cell_length_c", "nan", "not a finite number"),
])
def test_absurd_cif_cells_are_refused_before_pymatgen_builds_them(tmp_path, mp20_systems, field, value, problem):
    text = io.write(tmp_path / "c.cif", mp20_systems[:1]).read_text()
    text = re.sub(rf"{field}\s+\S+", f"{field} {value}", text)
    (tmp_path / "x.cif").write_text(text)
    with pytest.raises(io.StructureFileError, match=problem):
        io.read(tmp_path / "x.cif")


def test_an_overflowing_cif_coordinate_is_a_malformed_record(tmp_path, mp20_systems):
    text = io.write(tmp_path / "c.cif", mp20_systems[:1]).read_text().splitlines()
    site = next(i for i, line in enumerate(text) if line.split()[:1] == [mp20_systems[0].symbols[0]]
                and len(line.split()) >= 6)
    fields = text[site].split()
    fields[3] = "1e400"
    text[site] = "  " + " ".join(fields)
    (tmp_path / "x.cif").write_text("\n".join(text) + "\n")
    records = io.read_records(tmp_path / "x.cif")
    assert isinstance(records[0], io.StructureFileError) and "malformed CIF" in str(records[0])


def test_extxyz_keeps_identifiers_and_smiles(tmp_path, qm9_systems, mp20_systems):
    crystal = mp20_systems[0].replace(dataset="")
    back = io.read(io.write(tmp_path / "c.extxyz", [crystal]))[0]
    assert back.material_id == crystal.material_id and back.dataset == ""
    molecule = qm9_systems[0]
    back = io.read(io.write(tmp_path / "m.extxyz", [molecule]))[0]
    assert (back.smiles, back.material_id, back.dataset) == (molecule.smiles, molecule.material_id, "qm9")

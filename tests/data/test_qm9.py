import numpy as np
import pandas as pd
import pytest

from chemgen.data.qm9 import (
    EDM_SPLIT_SIZES,
    NUM_MOLECULES,
    edm_split,
    read_qm9_frame,
    row_to_system,
)
from chemgen.data.store import curate, load


def test_edm_split_sizes_are_disjoint_and_cover_every_molecule():
    split = edm_split()
    assert {k: len(v) for k, v in split.items()} == EDM_SPLIT_SIZES
    everything = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(everything), np.arange(NUM_MOLECULES))


def test_edm_split_matches_numpy_global_seed_stream():
    # EDM calls np.random.seed(0); np.random.permutation(130831).
    state = np.random.get_state()
    try:
        np.random.seed(0)
        perm = np.random.permutation(NUM_MOLECULES)
    finally:
        np.random.set_state(state)
    assert np.array_equal(edm_split()["train"], perm[:100_000])


def test_first_molecules_parse_with_properties():
    frame = read_qm9_frame(limit=6)
    methane = row_to_system(next(frame.itertuples(index=False)))
    assert methane.symbols == ["C", "H", "H", "H", "H"] and methane.smiles == "C"
    # C-H bond length of methane, B3LYP: 1.09 A
    assert np.linalg.norm(methane.pos[1] - methane.pos[0]) == pytest.approx(1.0919, abs=1e-3)
    assert methane.properties["gdb_index"] == 1
    assert len(methane.properties["harmonic_frequencies_cm1"]) == 3 * 5 - 6
    acetylene = row_to_system(list(frame.itertuples(index=False))[3])  # coordinates written as "0." in the CSV
    assert acetylene.smiles == "C#C" and acetylene.num_atoms == 4


def test_row_with_inconsistent_atom_count_is_rejected_with_reason():
    row = next(read_qm9_frame(limit=1).itertuples(index=False))._replace(N_atoms=7)
    with pytest.raises(ValueError, match="N_atoms=7 but 5 elements"):
        row_to_system(row)


# ---------------------------------------------------------------------------- row checks
@pytest.fixture()
def tiny_qm9(tmp_path, monkeypatch):
    """Five rows of each qm9pack file, and EDM's split shrunk to their 15 molecules."""
    from chemgen.data import qm9

    for path in qm9.qm9_source_files():
        pd.read_csv(path, nrows=5, dtype=str).to_csv(tmp_path / path.name, index=False)
    monkeypatch.setattr(qm9, "NUM_MOLECULES", 15)
    monkeypatch.setattr(qm9, "EDM_SPLIT_SIZES", {"train": 10, "valid": 3, "test": 2})
    return tmp_path


def _edit(folder, name, row, column, value):
    frame = pd.read_csv(folder / name, dtype=str)
    frame.loc[row, column] = value
    frame.to_csv(folder / name, index=False)


def test_bad_cells_are_bad_rows_named_by_their_own_file_row(tiny_qm9, store):
    from chemgen.data import qm9

    _edit(tiny_qm9, "qm9_part1.csv", 2, "HOMO_au", "abc")
    _edit(tiny_qm9, "qm9_part2.csv", 0, "XYZ_Ang", "[[0.1,0.2")
    _edit(tiny_qm9, "qm9_part2.csv", 1, "Elements", None)
    index = pd.read_csv(tiny_qm9 / "qm9_part3.csv").Index
    _edit(tiny_qm9, "qm9_part3.csv", 4, "Index", str(index[3]))  # a repeated GDB index
    result = curate(qm9.builder(data_dir=tiny_qm9), root=store, progress=False)
    m = result.manifest
    assert m["counts"] == {"rows_read": 15, "curated": 11, "bad": 4}
    bad = {(ex["source"], ex["row"]): ex for ex in m["bad_rows"]["examples"]}
    assert sorted(bad) == [("qm9_part1.csv", 2), ("qm9_part2.csv", 0), ("qm9_part2.csv", 1), ("qm9_part3.csv", 4)]
    assert "column HOMO_au: 'abc' is not a finite number" in bad["qm9_part1.csv", 2]["reason"]
    assert "column XYZ_Ang" in bad["qm9_part2.csv", 0]["reason"]
    assert "column Elements" in bad["qm9_part2.csv", 1]["reason"]
    assert bad["qm9_part3.csv", 4]["kind"] == "duplicate id" and "qm9_part3.csv row 3" in bad["qm9_part3.csv", 4]["reason"]
    systems = load("qm9", root=store)
    assert all(isinstance(s.properties["homo"], float) for s in systems)  # the column stayed numeric


def test_qm9_files_of_the_wrong_size_or_shape_are_errors_naming_them(tiny_qm9, store, monkeypatch):
    from chemgen.data import qm9
    from chemgen.data.store import CurationError

    monkeypatch.setattr(qm9, "NUM_MOLECULES", 130_831)
    with pytest.raises(CurationError, match="qm9_part1.csv.*15 rows in all"):
        curate(qm9.builder(data_dir=tiny_qm9), root=store, progress=False)
    pd.read_csv(tiny_qm9 / "qm9_part3.csv").drop(columns="XYZ_Ang").to_csv(tiny_qm9 / "qm9_part3.csv", index=False)
    with pytest.raises(CurationError, match=r"qm9_part3.csv: missing column\(s\) \['XYZ_Ang'\]"):
        read_qm9_frame(tiny_qm9)
    pd.read_csv(tiny_qm9 / "qm9_part2.csv").head(0).to_csv(tiny_qm9 / "qm9_part2.csv", index=False)
    with pytest.raises(CurationError, match="qm9_part2.csv: no data rows"):
        read_qm9_frame(tiny_qm9)

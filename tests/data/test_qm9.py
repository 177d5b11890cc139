import numpy as np
import pytest

from chemgen.data.qm9 import EDM_SPLIT_SIZES, NUM_MOLECULES, edm_split, read_qm9_frame, row_to_system


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

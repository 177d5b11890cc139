import gzip

import numpy as np
import pandas as pd
import pytest

from chemgen.data import BUILDERS
from chemgen.data.crystals import assign_splits, canonical_crystal, source_files
from chemgen.data.store import curate, load


def test_canonical_cell_is_niggli_reduced_primitive_with_c_along_z(mp20_systems):
    for s in mp20_systems:
        a, b, c, *_ = s.lattice_parameters
        assert a <= b + 1e-6 <= c + 2e-6  # Niggli: a <= b <= c
        # pymatgen's Lattice.from_parameters: c along z, a in the xz plane
        assert abs(s.cell[2, 0]) < 1e-8 and abs(s.cell[2, 1]) < 1e-8 and abs(s.cell[0, 1]) < 1e-8
        assert np.all((s.frac_coords >= 0) & (s.frac_coords < 1))


def test_conventional_cell_reduces_to_primitive():
    # Rock-salt NaCl in its 8-atom conventional cell has a 2-atom primitive cell.
    from pymatgen.core import Lattice, Structure

    conventional = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    primitive = canonical_crystal(conventional.to(fmt="cif"))
    assert conventional.num_sites == 8 and primitive.num_atoms == 2
    assert primitive.volume == pytest.approx(5.64**3 / 4, rel=1e-6)


def test_mp20_slice_curates_with_in_house_protocol(mp20_slice_dir, store):
    result = curate(BUILDERS["mp20"](data_dir=mp20_slice_dir), root=store, progress=False)
    m = result.manifest
    assert m["counts"] == {"rows_read": 120, "curated": 120, "bad": 0}
    assert m["splits"] == {"train": 40 + 36, "valid": 4, "test": 40}
    assert "in-house" in m["protocol"]
    test = load("mp20", "test", root=store)
    empty = [s for s in test if s.properties["e_above_hull"] is None]
    assert len(empty) == 10  # rows rebuilt from MatterGen's cache keep their empty field as None
    assert all(s.properties["formation_energy_per_atom"] < 5 for s in test)


def test_bad_rows_are_reported_with_reasons_not_dropped(tmp_path, mp20_slice_dir, store):
    folder = tmp_path / "mp_20"
    folder.mkdir()
    test = pd.read_csv(mp20_slice_dir / "test.csv.gz").head(5)
    test.loc[1, "cif"] = "data_broken\n_cell_length_a 3.0\n"
    test.loc[3, "cif"] = ""
    test.to_csv(folder / "test.csv", index=False)
    result = curate(BUILDERS["mp20"](data_dir=folder), root=store, progress=False)
    m = result.manifest
    assert m["counts"]["bad"] == 2 and m["counts"]["curated"] == 3
    reasons = [ex["reason"] for ex in m["bad_rows"]["examples"]]
    assert [ex["row"] for ex in m["bad_rows"]["examples"]] == [1, 3]
    assert "unparseable CIF" in reasons[0] and "empty cif" in reasons[1]
    assert (result.path / "bad_rows.csv").read_text().count("\n") == 3


def test_corrupt_csv_names_the_file(tmp_path, store):
    folder = tmp_path / "perov_5"
    folder.mkdir()
    (folder / "test.csv.gz").write_bytes(gzip.compress(b"\x00\x01not,a\ncsv") [:-4])
    with pytest.raises(ValueError, match="test.csv.gz"):
        BUILDERS["perov5"](data_dir=folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        source_files("mp20", tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["mpts52", "perov5", "carbon24"])
def test_other_cdvae_sets_curate(name, data_dir, store):
    result = curate(BUILDERS[name](data_dir=data_dir, limit=8), root=store, progress=False)
    assert result.manifest["counts"]["curated"] == 16 and result.manifest["counts"]["bad"] == 0
    assert result.manifest["splits"]["valid"] == 8 and result.manifest["splits"]["test"] == 8
    assert all(s.pbc and s.dataset == name for s in load(name, version=result.version, root=store))


def test_canonical_files_map_to_canonical_splits(tmp_path):
    from chemgen.data.crystals import SourceFile

    sources = [SourceFile(tmp_path / "train.csv", "train"), SourceFile(tmp_path / "val.csv", "val"),
               SourceFile(tmp_path / "test.csv", "test")]
    labels = assign_splits("mp20", sources, {"train": 5, "val": 3, "test": 2})
    assert list(labels["train"]) == ["train"] * 5 and list(labels["val"]) == ["valid"] * 3

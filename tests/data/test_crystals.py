import gzip
import time

import numpy as np
import pandas as pd
import pytest

from chemgen.datasets import curation_recipe
from chemgen.data.crystals import assign_splits, canonical_crystal, source_files
from chemgen.data.store import curate, list_datasets, load


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
    result = curate(curation_recipe("mp20", data_dir=mp20_slice_dir), root=store, progress=False)
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
    result = curate(curation_recipe("mp20", data_dir=folder), root=store, progress=False)
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
        curation_recipe("perov5", data_dir=folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        source_files("mp20", tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["mpts52", "perov5", "carbon24"])
def test_other_cdvae_sets_curate(name, data_dir, store):
    result = curate(curation_recipe(name, data_dir=data_dir, limit=8), root=store, progress=False)
    assert result.manifest["counts"]["curated"] == 16 and result.manifest["counts"]["bad"] == 0
    assert result.manifest["splits"]["valid"] == 8 and result.manifest["splits"]["test"] == 8
    assert all(s.pbc and s.dataset == name for s in load(name, version=result.version, root=store))


def test_canonical_files_map_to_canonical_splits(tmp_path):
    from chemgen.data.crystals import SourceFile

    sources = [SourceFile(tmp_path / "train.csv", "train"), SourceFile(tmp_path / "val.csv", "val"),
               SourceFile(tmp_path / "test.csv", "test")]
    labels = assign_splits("mp20", sources, {"train": 5, "val": 3, "test": 2})
    assert list(labels["train"]) == ["train"] * 5 and list(labels["val"]) == ["valid"] * 3


# ---------------------------------------------------------------------------- row checks
def _test_file(tmp_path, mp20_slice_dir, edit, rows=10):
    folder = tmp_path / "mp_20"
    folder.mkdir()
    frame = pd.read_csv(mp20_slice_dir / "test.csv.gz", dtype=str).head(rows)
    frame = edit(frame)
    frame.to_csv(folder / "test.csv", index=False)
    return folder


def test_each_unusable_cell_is_a_bad_row_naming_file_row_and_column(tmp_path, mp20_slice_dir, store):
    def edit(frame):
        frame.loc[1, "material_id"] = None            # an empty id
        frame.loc[2, "formation_energy_per_atom"] = "abc"
        frame.loc[3, "elements"] = "[Fe, O"           # not a list literal
        frame.loc[4, "material_id"] = frame.loc[0, "material_id"]
        frame.loc[5, "band_gap"] = "inf"
        return frame

    result = curate(curation_recipe("mp20", data_dir=_test_file(tmp_path, mp20_slice_dir, edit)), root=store, progress=False)
    m = result.manifest
    assert m["counts"] == {"rows_read": 10, "curated": 5, "bad": 5}
    bad = {ex["row"]: ex for ex in m["bad_rows"]["examples"]}
    assert sorted(bad) == [1, 2, 3, 4, 5] and {ex["source"] for ex in bad.values()} == {"test.csv"}
    assert bad[1]["kind"] == "missing id" and bad[1]["id"] == ""
    assert bad[2]["kind"] == "not a number" and "column formation_energy_per_atom: 'abc'" in bad[2]["reason"]
    assert bad[3]["kind"] == "bad list" and "column elements: '[Fe, O' is not a list literal" in bad[3]["reason"]
    first_id = bad[4]["id"]
    assert bad[4]["kind"] == "duplicate id" and f"duplicate id '{first_id}'" in bad[4]["reason"]
    assert "test.csv row 0" in bad[4]["reason"]
    assert "column band_gap" in bad[5]["reason"]
    assert m["bad_rows"]["by_kind"] == {"missing id": 1, "not a number": 2, "bad list": 1, "duplicate id": 1}
    systems = load("mp20", root=store)
    assert all(isinstance(s.properties["formation_energy_per_atom"], float) for s in systems)  # still numbers
    assert all(isinstance(s.properties["spacegroup.number"], int) for s in systems)
    assert "nan" not in {s.material_id for s in systems} and [s.material_id for s in systems].count(first_id) == 1
    lines = (result.path / "bad_rows.csv").read_text().splitlines()
    assert lines[0] == "source,row,id,reason,kind" and len(lines) == 6


def test_forty_copies_of_an_id_keep_the_first(tmp_path, mp20_slice_dir, store):
    def edit(frame):
        return pd.concat([frame.head(1)] * 41 + [frame.iloc[1:3]], ignore_index=True)

    result = curate(curation_recipe("mp20", data_dir=_test_file(tmp_path, mp20_slice_dir, edit)), root=store, progress=False)
    assert result.manifest["counts"] == {"rows_read": 43, "curated": 3, "bad": 40}
    assert result.manifest["bad_rows"]["by_kind"] == {"duplicate id": 40}
    assert len({s.material_id for s in load("mp20", root=store)}) == 3


def test_a_header_only_split_is_an_error_naming_the_file(tmp_path, mp20_slice_dir):
    from chemgen.data.store import CurationError

    folder = _test_file(tmp_path, mp20_slice_dir, lambda frame: frame.head(0))
    with pytest.raises(CurationError, match=r"mp_20/test\.csv: no data rows"):
        curation_recipe("mp20", data_dir=folder)


def test_a_file_none_of_whose_rows_curates_is_an_error_naming_it(tmp_path, mp20_slice_dir, store):
    from chemgen.data.store import CurationError

    def edit(frame):
        frame["cif"] = "data_broken\n"
        return frame

    folder = _test_file(tmp_path, mp20_slice_dir, edit, rows=3)
    with pytest.raises(CurationError, match=r"test\.csv: none of its 3 row\(s\) could be curated .*row 0"):
        curate(curation_recipe("mp20", data_dir=folder), root=store, progress=False)
    assert list_datasets(store).get("mp20", []) == []  # nothing stored


def test_absurd_cells_are_bad_rows_found_before_the_costly_reduction(tmp_path, mp20_slice_dir, store):
    from pymatgen.core import Lattice, Structure

    huge = Structure(Lattice.orthorhombic(1e9, 3, 3), ["Fe", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif")
    # 100 atoms 0.2 A apart: the primitive search on such a cell takes minutes; 100 sites are over 4 x 20
    chain = Structure(Lattice.orthorhombic(20, 3, 3), ["Fe"] * 100, [[i / 100, 0, 0] for i in range(100)]).to(fmt="cif")

    def edit(frame):
        frame.loc[0, "cif"], frame.loc[1, "cif"] = huge, chain
        return frame

    start = time.perf_counter()
    result = curate(curation_recipe("mp20", data_dir=_test_file(tmp_path, mp20_slice_dir, edit, rows=4)), root=store,
                    progress=False)
    assert time.perf_counter() - start < 30
    reasons = [ex["reason"] for ex in result.manifest["bad_rows"]["examples"]]
    assert "cell lengths" in reasons[0] and "100 sites before primitive reduction" in reasons[1]
    assert result.manifest["counts"]["curated"] == 2


def test_real_files_read_as_before(mp20_slice_dir):
    # The checked reader gives the numbers pandas gives, with the same types, and no problem on real rows.
    from chemgen.data.crystals import SourceFile, _clean, read_rows
    from chemgen.datasets import crystal_source

    source = SourceFile(mp20_slice_dir / "val.csv.gz", "val")
    checked, plain = read_rows(source, crystal_source("mp20")), pd.read_csv(source.path)
    assert checked["row_problem"].isna().all()
    for column in crystal_source("mp20").property_columns:
        for a, b in zip(plain[column], checked[column]):
            a, b = _clean(a), _clean(b)
            assert (a is None and b is None) or (a == b and type(a) is type(b))

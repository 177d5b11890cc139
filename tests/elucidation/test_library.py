"""The computed-spectra library: its index (kept per shard, extended as shards arrive), its filters, and the
comparison built for measured spectra, on real xTB spectra of the committed store and measured-like spectra made
from them with known distortions."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from chemgen.elucidation.comparison import Comparison, query_features, similarities, stick_features
from chemgen.elucidation.distortion import measured_like
from chemgen.elucidation.identity import hill_formula
from chemgen.elucidation.library import LibraryError, SpectralLibrary
from chemgen.spectra.broadening import GRID_CM1, broaden

STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
SHARDS = sorted(STORE.glob("shard-*.parquet"))[:3]       # 1,500 molecules of EDM's test split


def rows_of(shard: Path) -> list[dict]:
    return [r for r in pq.read_table(shard).to_pylist() if r["failure"] is None]


def formula_of(row: dict) -> str:
    from ase.data import chemical_symbols

    return hill_formula(Counter(chemical_symbols[z] for z in row["atomic_numbers"]))


def store_query(row: dict, comparison: Comparison, kinds=("ir", "raman")) -> dict:
    """A molecule's own computed spectra as the store broadens them, as a query."""
    columns = {"ir": "ir_km_mol", "raman": "raman_a4_amu"}
    return {k: query_features(broaden(row["frequencies_cm1"], row[columns[k]], k), None, comparison) for k in kinds}


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store") / "qm9-xtb"
    folder.mkdir()
    for shard in SHARDS[:2]:
        shutil.copy2(shard, folder / shard.name)
    return folder


@pytest.fixture(scope="module")
def library(small_store, tmp_path_factory) -> SpectralLibrary:
    return SpectralLibrary.open(small_store, cache_dir=tmp_path_factory.mktemp("cache"))


def test_the_index_holds_every_computed_molecule_and_finds_each_from_its_own_spectra(library):
    rows = rows_of(SHARDS[0]) + rows_of(SHARDS[1])
    assert len(library) == len(rows) and set(library.meta["inchikey"]) == {r["inchikey"] for r in rows}
    for row in rows[::97]:                     # a molecule's own computed spectra: it comes first
        hits = library.search(store_query(row, library.comparison), top_k=3)
        assert hits[0].inchikey == row["inchikey"] and hits[0].library == "qm9-xtb" and hits[0].rank == 1
        assert hits[0].similarity > 0.8 and set(hits[0].similarities) == {"ir", "raman"}
        assert hits[0].formula == formula_of(row) and hits[0].split == "test"


def test_a_new_shard_costs_its_own_indexing_only(small_store, tmp_path):
    cache = tmp_path / "cache"
    indexed = []
    first = SpectralLibrary.open(small_store, cache_dir=cache, progress=lambda done, total: indexed.append(total))
    assert indexed == [2, 2] and len(list(cache.glob("*/blocks/*.npz"))) == 2
    grown = tmp_path / "grown" / "qm9-xtb"
    shutil.copytree(small_store, grown)
    shutil.copy2(SHARDS[2], grown / SHARDS[2].name)
    indexed.clear()
    second = SpectralLibrary.open(grown, cache_dir=cache, progress=lambda done, total: indexed.append(total))
    assert indexed == [1]                        # the two shards it knew were not indexed again
    assert len(second) == len(first) + len(rows_of(SHARDS[2])) and second.content_hash != first.content_hash
    assert len(list(cache.glob("*/combined-*"))) == 1          # the older combination is gone
    newcomer = rows_of(SHARDS[2])[7]
    assert second.search(store_query(newcomer, second.comparison), top_k=1)[0].inchikey == newcomer["inchikey"]
    indexed.clear()
    SpectralLibrary.open(grown, cache_dir=cache, progress=lambda done, total: indexed.append(total))
    assert indexed == []                         # nothing new: the combined index is read as it is


def test_filters_by_formula_elements_and_mass_and_exclusion(library):
    row = rows_of(SHARDS[1])[40]
    query = store_query(row, library.comparison)
    formula = formula_of(row)
    isomers = library.search(query, top_k=500, formula=formula)
    assert isomers and {h.formula for h in isomers} == {formula}
    assert len(isomers) == min(500, library.count_formula(formula)) and isomers[0].inchikey == row["inchikey"]
    no_nitrogen = library.search(query, top_k=50, elements=["C", "H", "O"])
    assert all(set(h.formula) <= set("CHO0123456789") for h in no_nitrogen)
    light = library.search(query, top_k=50, mass_range=(0.0, 80.0))
    assert all(library.meta["mass"][library.meta["inchikey"] == h.inchikey][0] <= 80.0 for h in light)
    without = library.search(query, top_k=10, exclude=[row["inchikey"]])
    assert row["inchikey"] not in {h.inchikey for h in without} and len(without) == 10
    assert library.search(query, top_k=5, formula="C10H22") == []         # beyond QM9: not in the library


def test_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LibraryError, match="no spectra shards to search"):
        SpectralLibrary.open(tmp_path, cache_dir=tmp_path / "cache")


def test_the_comparison_reads_only_what_the_query_covers():
    row = rows_of(SHARDS[0])[3]
    comparison = Comparison()
    library_vector = stick_features(np.asarray(row["frequencies_cm1"]), np.asarray(row["ir_km_mol"]), comparison)
    values = broaden(row["frequencies_cm1"], row["ir_km_mol"], "ir")
    half = GRID_CM1 < 2000.0
    partial = query_features(np.where(half, values, 0.0), half, comparison)
    other = query_features(np.where(half, values, values[::-1]), np.ones_like(half), comparison)
    full = query_features(values, None, comparison)
    library_rows = library_vector[None, :]
    # the missing half costs nothing; replacing it with something else does
    assert similarities(partial, library_rows)[0] == pytest.approx(similarities(full, library_rows)[0], abs=0.06)
    assert similarities(other, library_rows)[0] < similarities(partial, library_rows)[0] - 0.05


def test_the_measured_spectrum_handling_beats_the_plain_cosine_on_distorted_spectra(small_store, tmp_path):
    """Measured-like IR spectra (shifted, reshaped, re-weighted, on a baseline, as transmittance or absorbance):
    the comparison for measured spectra finds the molecule far more often than the plain cosine of the store's
    spectra does (measured on 40 molecules of a 1,000-molecule library; seeds fixed)."""
    rows = rows_of(SHARDS[0])[::12][:40]
    found = {}
    for name, comparison in (("measured", Comparison()), ("plain", Comparison.plain())):
        library = SpectralLibrary.open(small_store, comparison=comparison, cache_dir=tmp_path / "cache")
        rng = np.random.default_rng(0)
        top10 = 0
        for row in rows:
            values, covered = measured_like(np.asarray(row["frequencies_cm1"]), np.asarray(row["ir_km_mol"]), rng)
            hits = library.search({"ir": query_features(values, covered, comparison)}, top_k=10)
            top10 += row["inchikey"] in {h.inchikey for h in hits}
        found[name] = top10 / len(rows)
    assert found["measured"] >= 0.6 and found["measured"] >= found["plain"] + 0.3, found


def test_an_undistorted_measured_like_spectrum_is_the_stores_own():
    row = rows_of(SHARDS[0])[0]
    values, covered = measured_like(np.asarray(row["frequencies_cm1"]), np.asarray(row["ir_km_mol"]),
                                    np.random.default_rng(1), strength=0.0)
    expected = broaden(row["frequencies_cm1"], row["ir_km_mol"], "ir", shape="lorentzian")
    assert covered.all()
    cosine = float(values @ expected / np.linalg.norm(values) / np.linalg.norm(expected))
    assert cosine > 0.999

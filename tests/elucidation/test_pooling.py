"""Pooling: the library, the chemist's own library and the generator's samples in one ranking, merged by canonical
key, every candidate scored by the same comparison, sources named; explicit sources that do not exist are errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rdkit import Chem

from chemgen.elucidation import generator, run
from chemgen.elucidation.pooling import merge, parse_sources, pool
from chemgen.elucidation.ranking import rank_candidates
from chemgen.errors import UsageError
from chemgen.spectra.broadening import broaden

STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
SHARD = sorted(STORE.glob("shard-*.parquet"))[0]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [r for r in pq.read_table(SHARD).to_pylist() if r["failure"] is None]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("store") / "qm9-xtb"
    folder.mkdir()
    shutil.copy2(SHARD, folder / SHARD.name)
    return folder


def query_of(row: dict) -> dict:
    return {"ir": broaden(row["frequencies_cm1"], row["ir_km_mol"], "ir"),
            "raman": broaden(row["frequencies_cm1"], row["raman_a4_amu"], "raman")}


def mol_of(row: dict) -> Chem.Mol:
    from chemgen.elucidation.pooling import molecule_3d

    return molecule_3d(row)


def test_a_molecule_in_the_library_and_in_your_own_is_one_candidate_from_both(rows, store, tmp_path):
    from chemgen.spectra.user_library import add_candidates

    small = min(rows, key=lambda r: len(r["atomic_numbers"]))
    mine = add_candidates("mine", smiles=[small["smiles"], "CCO"], root=tmp_path / "libraries").library
    result = pool(query_of(small), ("library", "user"), library_folder=store, user_roots=[mine], top_k=5)
    top = result.candidates[0]
    assert set(top.sources) == {"library:qm9-xtb", "user:mine"} and top.rank == 1
    assert top.similarity > 0.8 and set(top.similarities) == {"ir", "raman"}
    assert [r.source for r in result.reports] == ["library:qm9-xtb", "user:mine"]
    assert len({c.inchikey for c in result.candidates}) == len(result.candidates)     # merged, not repeated
    assert all(c.formula_match is None for c in result.candidates)


def test_the_generators_samples_join_scored_like_the_library(rows, store, monkeypatch):
    """A fake DiffSpectra samples the query's own molecule twice and another once; their spectra (the store's
    sticks here, GFN2-xTB in use) score them: the sampled truth merges with its library entry."""
    truth, other = rows[10], rows[20]
    sampled = rank_candidates([mol_of(truth), mol_of(truth), mol_of(other)], None, None)
    monkeypatch.setattr(generator, "load_elucidator", lambda model: object())
    monkeypatch.setattr(generator, "elucidate_spectra", lambda *args, **kwargs: sampled)
    sticks = {c.inchikey: row for c, row in zip(sampled, (truth, other))}

    def store_sticks(mol):
        from chemgen.elucidation.identity import canonical_key

        return sticks[canonical_key(mol)]

    result = pool(query_of(truth), None, library_folder=store, user_roots=[], sticks_fn=store_sticks, top_k=60)
    top = result.candidates[0]
    assert top.sources == ("library:qm9-xtb", "model") and top.count == 2
    assert {r.source for r in result.reports if r.searched} == {"library:qm9-xtb", "model"}
    sampled_other = next(c for c in result.candidates if c.count == 1)
    assert "model" in sampled_other.sources and sampled_other.similarity is not None


def test_a_formula_restricts_every_source(rows, store):
    from collections import Counter

    from ase.data import chemical_symbols

    from chemgen.elucidation.identity import hill_formula

    truth = rows[30]
    formula = hill_formula(Counter(chemical_symbols[z] for z in truth["atomic_numbers"]))
    result = pool(query_of(truth), ("library",), library_folder=store, formula=formula, top_k=50)
    assert result.candidates and all(c.formula == formula and c.formula_match for c in result.candidates)
    assert result.isomers["library:qm9-xtb"] == len(result.candidates) or len(result.candidates) == 50


def test_sources_asked_for_by_name_must_exist(rows, store, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no libraries of your own"):
        pool(query_of(rows[0]), ("user",), user_roots=[tmp_path / "none"])
    with pytest.raises(UsageError, match="unknown source\\(s\\) nmr"):
        parse_sources("library,nmr")
    assert parse_sources("model, library") == ("model", "library") and parse_sources("") is None
    def no_model(model):
        raise run.NoTrainedModelError("no trained DiffSpectra here")

    monkeypatch.setattr(generator, "load_elucidator", no_model)
    with pytest.raises(run.NoTrainedModelError):
        pool(query_of(rows[0]), ("model",), library_folder=store)
    # by default, whichever sources exist: the missing ones are said, not fatal
    quiet = pool(query_of(rows[0]), None, library_folder=store, user_roots=[tmp_path / "none"], top_k=3)
    assert quiet.candidates and [r.source for r in quiet.reports if r.searched] == ["library:qm9-xtb"]
    assert [(r.source, r.detail) for r in quiet.reports if not r.searched] == [("model", "no trained DiffSpectra here")]


def test_merge_keeps_the_library_similarity_and_the_sample_count(rows):
    from dataclasses import replace

    sampled = rank_candidates([mol_of(rows[5])] * 3, None, None)[0]
    library_entry = replace(sampled, count=0, fraction=0.0, similarity=0.9, similarities={"ir": 0.9}, score=0.9,
                            sources=("library:qm9-xtb",), origin=object())
    from_model = replace(sampled, similarity=0.7, similarities={"ir": 0.7}, score=0.7, sources=("model",))
    (merged,) = merge([from_model, library_entry])
    assert merged.similarity == 0.9 and merged.count == 3 and merged.sources == ("model", "library:qm9-xtb")
    assert np.isclose(merged.score, 0.9)

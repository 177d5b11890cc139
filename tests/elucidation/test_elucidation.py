"""chemgen.elucidation: keys, ranking, spectral re-ranking, metrics and files, on real molecules and real
xTB spectra from the committed store (datasets/spectra/qm9-xtb); xTB itself runs once, on formaldehyde."""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem

from chemgen.atoms import AtomicSystem
from chemgen.bonds import rdkit_determine_bonds
from chemgen.elucidation import (
    canonical_form,
    canonical_key,
    computed_spectra,
    elucidation_metrics,
    modality_similarities,
    normalise_formula,
    rank_candidates,
    rerank,
    spectral_similarity,
    write_candidates,
)
from chemgen.elucidation import outputs
from chemgen.errors import UsageError
from chemgen.spectra.broadening import GRID_CM1, broaden
from chemgen.spectra.compute import SpectraFailure
from chemgen.spectra.shards import read_table

STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
# Rows of the store (good spectra, computation order): three isomers C7H12O2 and one C7H10O.
LACTONE, ALDEHYDE, ALCOHOL, OTHER_FORMULA = 21, 24, 34, 17


def embed(smiles: str, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    return mol


@pytest.fixture(scope="module")
def store() -> list[dict]:
    """The first 40 molecules with good spectra: SMILES, a 3D sample rebuilt from the relaxed xTB geometry
    as generated samples are (rdDetermineBonds), and the broadened IR and Raman spectra."""
    columns = ["smiles", "atomic_numbers", "positions", "frequencies_cm1", "ir_km_mol", "raman_a4_amu"]
    rows = read_table(STORE, columns=columns, only_ok=True).slice(0, 40).to_pylist()
    out = []
    for row in rows:
        system = AtomicSystem.molecule(row["atomic_numbers"], np.reshape(row["positions"], (-1, 3)))
        out.append({
            "smiles": row["smiles"], "system": system,
            "spectra": {"ir": broaden(row["frequencies_cm1"], row["ir_km_mol"], "ir"),
                        "raman": broaden(row["frequencies_cm1"], row["raman_a4_amu"], "raman")},
        })
    return out


def sample(store: list[dict], row: int) -> Chem.Mol:
    return rdkit_determine_bonds(store[row]["system"])


def store_lookup(store: list[dict]):
    """A compute function that answers from the store's xTB spectra (what xTB would compute, without xTB)."""
    by_key = {canonical_key(Chem.MolFromSmiles(r["smiles"])): r["spectra"] for r in store}
    calls = []

    def compute(mol: Chem.Mol) -> dict:
        calls.append(mol)
        return by_key[canonical_key(mol)]

    compute.calls = calls
    return compute


# ---------------------------------------------------------------------------- identity
def test_tautomers_and_equivalent_forms_share_a_key_and_different_molecules_do_not():
    pyridone, hydroxypyridine = embed("O=c1cccc[nH]1"), embed("Oc1ccccn1")
    assert canonical_key(pyridone) == canonical_key(hydroxypyridine) == "UBQKCCHYAOITMY-UHFFFAOYSA-N"
    # keto/enol: InChI alone keeps them apart, the tautomer canonicalisation does not
    acetone, enol = embed("CC(C)=O"), embed("CC(O)=C")
    assert Chem.MolToInchiKey(Chem.MolFromSmiles("CC(C)=O")) != Chem.MolToInchiKey(Chem.MolFromSmiles("CC(O)=C"))
    assert canonical_key(acetone) == canonical_key(enol)
    assert canonical_form(enol).smiles == "CC(C)=O" and canonical_form(enol).sampled_smiles == "C=C(C)O"
    # zwitterion and neutral glycine; the two ways of writing a nitro group
    assert canonical_key(embed("[NH3+]CC([O-])=O")) == canonical_key(embed("NCC(=O)O"))
    assert canonical_key(Chem.MolFromSmiles("CN(=O)=O")) == canonical_key(Chem.MolFromSmiles("C[N+](=O)[O-]"))
    # different constitutions differ
    keys = {canonical_key(embed(s)) for s in ("CCO", "COC", "CC(C)=O", "CCC=O", "O=c1cccc[nH]1")}
    assert len(keys) == 5


def test_key_is_deterministic_ignores_stereo_by_default_and_leaves_the_input_alone():
    r_form, s_form = embed("C[C@H](N)C(=O)O"), embed("C[C@@H](N)C(=O)O")
    atoms = r_form.GetNumAtoms()
    assert canonical_key(r_form) == canonical_key(s_form) == canonical_key(embed("CC(N)C(=O)O", seed=7))
    assert canonical_key(r_form, stereo=True) != canonical_key(s_form, stereo=True)  # stereo read from 3D
    expected = canonical_key(Chem.MolFromSmiles("OCC1OC11CCCC1"))
    assert [canonical_key(embed("OCC1OC11CCCC1", seed=s)) for s in range(3)] == [expected] * 3
    assert r_form.GetNumAtoms() == atoms and r_form.GetNumConformers() == 1  # hydrogens and 3D kept


def test_molecules_that_do_not_sanitise_have_no_key():
    pentavalent = Chem.MolFromSmiles("CC(C)(C)(C)(C)C", sanitize=False)
    assert canonical_key(pentavalent) is None
    assert canonical_key(None) is None
    assert canonical_form(Chem.MolFromSmiles("c1cccc1", sanitize=False)) is None  # cannot be kekulised


def test_samples_rebuilt_from_xtb_geometries_get_the_key_of_their_smiles(store):
    checked = 0
    for row in store[:20]:
        try:
            mol = rdkit_determine_bonds(row["system"])
        except ValueError:  # two QM9 geometries here have no neutral bond assignment
            continue
        assert canonical_key(mol) == canonical_key(Chem.MolFromSmiles(row["smiles"])), row["smiles"]
        checked += 1
    assert checked >= 18


# ---------------------------------------------------------------------------- ranking
def pyridine_ethanol_samples() -> list[Chem.Mol | None]:
    return [
        embed("Oc1ccccn1", 1), embed("O=c1cccc[nH]1", 2), embed("O=c1cccc[nH]1", 3),  # one compound, 3x
        embed("CCO", 4), embed("COC", 5), embed("CCO", 6), embed("COC", 7),           # 2x and 2x
        None, embed("CC.O", 8), Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False),  # invalid
    ]


def test_rank_candidates_groups_counts_and_keeps_a_3d_representative():
    samples = pyridine_ethanol_samples()
    ranking = rank_candidates(samples)
    assert [c.rank for c in ranking] == [1, 2, 3]
    assert [(c.smiles, c.count) for c in ranking[:1]] == [("O=c1cccc[nH]1", 3)]
    assert ranking[0].fraction == pytest.approx(3 / 7) and ranking[1].fraction == pytest.approx(2 / 7)
    # the 2-2 tie goes by InChIKey, whatever the sampling order
    assert [c.inchikey for c in ranking[1:]] == sorted(canonical_key(Chem.MolFromSmiles(s)) for s in ("CCO", "COC"))
    assert (ranking.num_samples, ranking.num_valid, ranking.num_formula_match) == (10, 7, 7)
    assert ranking.invalid == {"no molecule": 1, "several fragments": 1, "does not sanitise": 1}
    top = ranking[0]
    # representative: the first sample of the most frequent sampled form (the pyridone, samples[1])
    assert top.sample_smiles == "O=c1cccc[nH]1" and top.formula == "C5H5NO"
    assert top.mol.GetNumAtoms() == samples[1].GetNumAtoms() == 12
    np.testing.assert_allclose(top.mol.GetConformer().GetPositions(), samples[1].GetConformer().GetPositions())
    assert top.mol is not samples[1]
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert [(c.inchikey, c.count) for c in rank_candidates(shuffled)] == [(c.inchikey, c.count) for c in ranking]
    assert [c.count for c in rank_candidates(samples, top_k=2)] == [3, 2]
    assert len(rank_candidates(samples, top_k=None)) == 3
    assert rank_candidates([None, None]) == [] and rank_candidates([]).num_valid == 0
    with pytest.raises(UsageError, match="top_k"):
        rank_candidates(samples, top_k=0)


def test_formula_filter_keeps_only_that_formula(store):
    samples = pyridine_ethanol_samples()
    ranking = rank_candidates(samples, formula="OC2H6")
    assert ranking.formula == "C2H6O" and ranking.num_formula_match == 4
    assert sorted(c.smiles for c in ranking) == ["CCO", "COC"]
    assert all(c.fraction == pytest.approx(2 / 7) for c in ranking)  # share of all valid samples
    assert rank_candidates(samples, formula="C6H6") == []
    isomers = [sample(store, r) for r in (LACTONE, ALDEHYDE, OTHER_FORMULA, ALCOHOL)]
    assert [c.formula for c in rank_candidates(isomers, formula="C7H12O2")] == ["C7H12O2"] * 3
    assert normalise_formula("H2O") == normalise_formula("OH2") == "H2O"
    assert normalise_formula("CH3CH2OH") == "C2H6O" and normalise_formula("ClCH3") == "CH3Cl"


@pytest.mark.parametrize(("formula", "problem"), [
    ("", "empty"), ("   ", "empty"), ("C2H6Q", "'Q' is not an element"), ("c2h6o", "unexpected 'c'"),
    ("C(H3)2", r"unexpected '\('"), ("C0H4", "count of zero"), ("CH3+", "charges are not supported"),
    ("C2 H6 Oo", "'Oo' is not an element"),
])
def test_bad_formula_is_a_usage_error_naming_the_problem(formula, problem):
    with pytest.raises(UsageError, match=problem):
        rank_candidates([embed("CCO")], formula=formula)


# ---------------------------------------------------------------------------- similarity and re-ranking
def test_spectral_similarity_is_one_for_identical_spectra_and_lower_for_another_molecule(store):
    mine, other = store[ALDEHYDE]["spectra"], store[LACTONE]["spectra"]
    assert spectral_similarity(mine, mine) == pytest.approx(1.0)
    assert spectral_similarity({k: 3.5 * v for k, v in mine.items()}, mine) == pytest.approx(1.0)  # scale-free
    per_kind = modality_similarities(mine, other)
    assert set(per_kind) == {"ir", "raman"} and max(per_kind.values()) < 0.95
    assert spectral_similarity(mine, other) == pytest.approx(np.mean(list(per_kind.values())))
    assert spectral_similarity(mine, other) < 0.7
    # an IR-only query compares IR only; UV-Vis in the query is ignored
    assert spectral_similarity({"ir": mine["ir"], "uv-vis": np.ones(10)}, other) == pytest.approx(per_kind["ir"])
    # an uploaded spectrum covering 1,500-4,000 cm^-1 only: the rest of the grid does not count
    covered = GRID_CM1 >= 1500
    partial = {"ir": (np.where(covered, mine["ir"], 0.0), covered)}
    cropped = {"ir": np.where(covered, mine["ir"], 0.0)}
    assert spectral_similarity(partial, mine) == pytest.approx(1.0)
    assert spectral_similarity(cropped, mine) < 0.999
    assert spectral_similarity({"ir": np.zeros(GRID_CM1.size)}, mine) == 0.0
    with pytest.raises(UsageError, match="3501-point grid"):
        spectral_similarity({"ir": np.ones(100)}, mine)
    with pytest.raises(UsageError, match="unknown spectrum kind"):
        spectral_similarity({"nmr": mine["ir"]}, mine)
    with pytest.raises(UsageError, match="no computed raman"):
        spectral_similarity(mine, {"ir": mine["ir"]})


def test_rerank_puts_the_spectral_match_first_even_when_sampled_less(store):
    samples = [sample(store, LACTONE)] * 3 + [sample(store, ALCOHOL)] * 2 + [sample(store, ALDEHYDE)]
    ranking = rank_candidates(samples, formula="C7H12O2")
    assert [c.count for c in ranking] == [3, 2, 1]
    truth = canonical_key(Chem.MolFromSmiles(store[ALDEHYDE]["smiles"]))
    assert ranking[2].inchikey == truth
    compute = store_lookup(store)
    reranked = rerank(ranking, store[ALDEHYDE]["spectra"], compute)
    assert len(compute.calls) == 3
    assert (reranked.num_samples, reranked.num_valid, reranked.formula) == (6, 6, "C7H12O2")
    assert [c.rank for c in reranked] == [1, 2, 3]
    assert reranked[0].inchikey == truth and reranked[0].count == 1
    assert reranked[0].similarity == pytest.approx(1.0) and reranked[0].score == pytest.approx(1.0)
    assert reranked[0].similarities == pytest.approx({"ir": 1.0, "raman": 1.0})
    assert reranked[1].similarity > reranked[2].similarity
    assert all(c.failure is None and c.spectra is not None for c in reranked)
    # the product rule weighs the sampler's frequency too: here the lactone (3/6 of samples) wins
    product = rerank(ranking, store[ALDEHYDE]["spectra"], compute, rule="product")
    by_key = {c.inchikey: c for c in product}
    for c in product:
        assert c.score == pytest.approx(max(c.similarity, 0.0) * c.fraction)
    assert by_key[truth].score == pytest.approx(1 / 6)
    assert product[0].inchikey == ranking[0].inchikey
    assert [c.score for c in product] == sorted((c.score for c in product), reverse=True)


def test_a_failing_spectrum_computation_is_survived_and_ranked_last(store):
    samples = [sample(store, LACTONE)] * 3 + [sample(store, ALCOHOL)] * 2 + [sample(store, ALDEHYDE)]
    ranking = rank_candidates(samples)
    lookup = store_lookup(store)
    lactone = canonical_key(Chem.MolFromSmiles(store[LACTONE]["smiles"]))
    alcohol = canonical_key(Chem.MolFromSmiles(store[ALCOHOL]["smiles"]))

    def flaky(mol):
        key = canonical_key(mol)
        if key == lactone:
            raise SpectraFailure("connectivity changed during the xTB optimisation")
        if key == alcohol:
            return {"ir": np.ones(7), "raman": np.ones(7)}  # not on the grid
        return lookup(mol)

    reranked = rerank(ranking, store[ALDEHYDE]["spectra"], flaky)
    assert [c.rank for c in reranked] == [1, 2, 3]
    assert reranked[0].similarity == pytest.approx(1.0) and reranked[0].failure is None
    assert [c.inchikey for c in reranked[1:]] == [lactone, alcohol]  # failures keep their previous order
    assert reranked[1].failure == "connectivity changed during the xTB optimisation"
    assert "3501-point grid" in reranked[2].failure
    assert all(c.similarity is None and c.score is None and c.spectra is None for c in reranked[1:])

    def broken(mol):
        raise ZeroDivisionError("boom")

    everything_fails = rerank(ranking, store[ALDEHYDE]["spectra"], broken)
    assert [c.inchikey for c in everything_fails] == [c.inchikey for c in ranking]
    assert {c.failure for c in everything_fails} == {"ZeroDivisionError: boom"}
    # a bad query or rule is the caller's error, raised before anything is computed
    with pytest.raises(UsageError, match="no spectrum to compare"):
        rerank(ranking, {"uv-vis": np.ones(5)}, broken)
    with pytest.raises(UsageError, match="re-rank rule"):
        rerank(ranking, store[ALDEHYDE]["spectra"], broken, rule="vote")


def test_production_compute_function_runs_xtb_on_formaldehyde():
    formaldehyde = embed("C=O")
    spectra = computed_spectra(formaldehyde)  # GFN2-xTB relax + IR/Raman, < 1 s
    assert set(spectra) == {"ir", "raman"} and all(v.shape == GRID_CM1.shape for v in spectra.values())
    assert 1750 < GRID_CM1[spectra["ir"].argmax()] < 1950      # C=O stretch dominates the IR
    assert 2700 < GRID_CM1[spectra["raman"].argmax()] < 3100   # C-H stretches dominate the Raman
    [candidate] = rank_candidates([formaldehyde])
    flat = Chem.MolFromSmiles("C=O")  # no coordinates: a failure, not a crash
    [reranked] = rerank([candidate], spectra)
    assert reranked.similarity == pytest.approx(1.0, abs=1e-6)
    assert "no 3D coordinates" in rerank([replace(candidate, mol=flat)], spectra)[0].failure


# ---------------------------------------------------------------------------- metrics
def test_metrics_on_a_hand_built_case():
    def ranked(*smiles):
        return rank_candidates([embed(s, i) for i, s in enumerate(smiles) for _ in range(len(smiles) - i)])

    truths = [embed("Oc1ccccn1"), embed("CCO"), embed("CC(C)=O"), embed("CCN")]
    lists = [
        ranked("O=c1cccc[nH]1", "CCO"),           # hit at rank 1 (as the other tautomer)
        ranked("COC", "CC=O", "CCO"),             # hit at rank 3
        ranked("CCC", "CCCC"),                    # miss
        [],                                       # no valid candidate
    ]
    assert [c.smiles for c in lists[1]] == ["COC", "CC=O", "CCO"]
    keys = [canonical_key(m) for m in truths]
    metrics = elucidation_metrics(keys, lists, truths, ks=(1, 2, 3))
    fp = [AllChem.GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(s), 2, nBits=2048) for s in ("CCO", "COC",
                                                                                                  "CC(C)=O", "CCC")]
    ether, propane = DataStructs.TanimotoSimilarity(fp[0], fp[1]), DataStructs.TanimotoSimilarity(fp[2], fp[3])
    assert 0 < ether < 1 and 0 < propane < 1
    assert metrics == pytest.approx({
        "num_queries": 4, "top1_accuracy": 1 / 4, "top2_accuracy": 1 / 4, "top3_accuracy": 2 / 4,
        "mean_tanimoto_top1": (1.0 + ether + propane + 0.0) / 4, "valid_fraction": 3 / 4,
    })
    assert elucidation_metrics(None, lists, truths, ks=(1, 2, 3)) == metrics  # keys computed from truths
    assert elucidation_metrics(keys, lists, truths)["top10_accuracy"] == 2 / 4
    with pytest.raises(UsageError, match="one candidate list"):
        elucidation_metrics(keys, lists[:3], truths)
    with pytest.raises(UsageError, match="ks"):
        elucidation_metrics(keys, lists, truths, ks=(0,))


# ---------------------------------------------------------------------------- files
def test_write_candidates_round_trips_and_leaves_nothing_half_written(store, tmp_path, monkeypatch):
    from PIL import Image

    samples = [sample(store, LACTONE)] * 3 + [sample(store, ALCOHOL)] * 2 + [sample(store, ALDEHYDE)]
    lookup = store_lookup(store)
    lactone = canonical_key(Chem.MolFromSmiles(store[LACTONE]["smiles"]))

    def compute(mol):
        if canonical_key(mol) == lactone:
            raise SpectraFailure("2 imaginary mode(s) beyond -50 cm^-1")
        return lookup(mol)

    query = {"ir": store[ALDEHYDE]["spectra"]["ir"], "raman": store[ALDEHYDE]["spectra"]["raman"]}
    candidates = rerank(rank_candidates(samples), query, compute)
    folder = tmp_path / "query-1"
    paths = write_candidates(folder, "query-1", candidates, query)
    assert [p.name for p in paths] == ["candidates.csv", "candidates.sdf", "candidate-01.png", "candidate-02.png",
                                       "candidate-03.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)  # no staging left

    with open(folder / "candidates.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:10] == ["rank", "smiles", "inchikey", "sources", "count", "fraction", "similarity", "score",
                                  "formula", "formula_match"]
    assert {row["sources"] for row in rows} == {"model"} and {row["formula_match"] for row in rows} == {""}
    for row, c in zip(rows, candidates, strict=True):
        assert (int(row["rank"]), row["smiles"], row["inchikey"], int(row["count"]), row["formula"]) == \
            (c.rank, c.smiles, c.inchikey, c.count, c.formula)
        assert float(row["fraction"]) == pytest.approx(c.fraction, rel=1e-5)
    assert float(rows[0]["similarity"]) == pytest.approx(1.0) and float(rows[0]["similarity_ir"]) == pytest.approx(1.0)
    assert rows[2]["similarity"] == rows[2]["score"] == "" and "imaginary" in rows[2]["failure"]

    records = list(Chem.SDMolSupplier(str(folder / "candidates.sdf"), removeHs=False))
    assert len(records) == 3
    for record, c in zip(records, candidates):
        assert record.GetProp("_Name") == f"query-1 rank {c.rank}"
        assert record.GetProp("inchikey") == c.inchikey and int(record.GetProp("count")) == c.count
        assert canonical_key(record) == c.inchikey
        assert record.GetNumAtoms() == c.mol.GetNumAtoms() == 21
        np.testing.assert_allclose(record.GetConformer().GetPositions(), c.mol.GetConformer().GetPositions(),
                                   atol=1e-4)
    assert not records[2].HasProp("similarity") and records[2].HasProp("failure")

    for path in paths[2:]:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 600

    # a failure while writing leaves the earlier files as they were
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_draw = outputs._Overlays.draw

    def draw_then_fail(self, path, candidate):
        if path.name == "candidate-02.png":
            raise RuntimeError("disk full")
        real_draw(self, path, candidate)

    monkeypatch.setattr(outputs._Overlays, "draw", draw_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_candidates(folder, "query-1", candidates[:2], query)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.setattr(outputs._Overlays, "draw", real_draw)
    # a shorter list replaces the files and removes the PNG it no longer has
    write_candidates(folder, "query-1", candidates[:1], None)
    assert sorted(p.name for p in folder.iterdir()) == ["candidate-01.png", "candidates.csv", "candidates.sdf"]
    assert len(list(Chem.SDMolSupplier(str(folder / "candidates.sdf"), removeHs=False))) == 1

"""The elucidation benchmark: test queries from the spectra store, candidates sampled by the GPU command
(without the chemistry stack), and scoring that finds a perfect sampler perfect and a wrong one wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chemgen.data.tensors import TensorPack
from chemgen.elucidation.benchmark import markdown_table, query_pack, score_candidates, truth_molecules
from chemgen.errors import UsageError
from chemgen.models.diffspectra.candidates import FORMAT, SETTINGS, load_candidates, save_candidates
from chemgen.models.diffspectra.data import spectra_pack
from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS

STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
CONFIG = Path(__file__).resolve().parents[2] / "chemgen" / "configs" / "diffspectra-tiny.yaml"


@pytest.fixture(scope="module")
def queries() -> TensorPack:
    return query_pack(STORE, num_queries=5, seed=0)


def _graphs_of(queries: TensorPack, order: list[int], copies: int) -> dict[str, torch.Tensor]:
    """The candidates file's graphs for a sampler that returns, for query q, ``copies`` copies of the true
    molecule of query ``order[q]``."""
    index = torch.full((max(ATOM_ELEMENTS) + 1,), -1, dtype=torch.long)
    index[torch.tensor(ATOM_ELEMENTS)] = torch.arange(len(ATOM_ELEMENTS))
    rows = torch.tensor(order).repeat_interleave(copies)
    dense = queries.dense(rows)
    n = dense.mask.shape[1]
    return {"pos": dense.pos.float(), "atom_types": (index[dense.atomic_numbers] * dense.mask).to(torch.int8),
            "charges": dense.extras["atom/charge"].to(torch.int8),
            "bonds": dense.extras["atom/bonds"][:, :, :n].to(torch.int8), "mask": dense.mask}


def _candidates(queries: TensorPack, order: list[int], copies: int = 3) -> dict:
    return {"format": FORMAT, "qm9_index": queries.extras["system/qm9_index"].clone(), "num_samples": copies,
            "num_steps": 0, "seed": 0, "settings": {"ir+raman": _graphs_of(queries, order, copies)}}


def test_queries_are_test_split_molecules_that_decode(queries):
    test_only = spectra_pack(STORE, split="test", limit=20)[0]
    assert len(queries) == 5
    assert set(queries.extras["system/qm9_index"].tolist()) <= set(test_only.extras["system/qm9_index"].tolist())
    assert all(m.GetNumAtoms() == int(n) for m, n in zip(truth_molecules(queries), queries.num_atoms))
    with pytest.raises(UsageError, match="positive"):
        query_pack(STORE, num_queries=0)


def test_a_perfect_sampler_scores_one_and_a_wrong_one_zero(queries, tmp_path):
    n = len(queries)
    perfect = score_candidates(_candidates(queries, list(range(n))), queries, top_k=10)
    metrics = perfect["settings"]["ir+raman"]["metrics"]
    assert metrics["top1_accuracy"] == 1.0 and metrics["top10_accuracy"] == 1.0
    assert metrics["mean_tanimoto_top1"] == pytest.approx(1.0) and metrics["valid_samples"] == 1.0
    shifted = list(range(1, n)) + [0]    # each query gets the next query's molecule: all different molecules
    wrong = score_candidates(_candidates(queries, shifted), queries, top_k=10)["settings"]["ir+raman"]["metrics"]
    assert wrong["top1_accuracy"] == 0.0 and wrong["mean_tanimoto_top1"] < 0.9
    # files round-trip, and a foreign file is refused with its name
    path = save_candidates(tmp_path / "c.pt", _candidates(queries, list(range(n))))
    assert load_candidates(path)["num_samples"] == 3
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match="bad.pt"):
        load_candidates(tmp_path / "bad.pt")
    other = _candidates(queries, list(range(n)))
    other["qm9_index"] = other["qm9_index"] + 1
    with pytest.raises(UsageError, match="other queries"):
        score_candidates(other, queries)
    assert "| run | ir+raman | 100.0% | 100.0% | 1.000 | 100.0% |" in markdown_table(perfect, "run")


def test_reranking_orders_candidates_by_the_computed_spectra(queries):
    """Each query's samples: one copy of its own molecule and two of the next query's, so counting ranks the
    wrong molecule first; a compute function that returns each molecule's own query spectra (as xTB would
    for the true structure) moves the true one to the top."""
    from chemgen.elucidation.benchmark import _numpy_spectra
    from chemgen.elucidation.identity import canonical_key

    n = len(queries)
    truths = truth_molecules(queries)
    keys = [canonical_key(m) for m in truths]
    spectra = _numpy_spectra(queries, "ir+raman")
    order = [m for q in range(n) for m in (q, (q + 1) % n, (q + 1) % n)]
    candidates = {**_candidates(queries, list(range(n)), 3), "settings": {"ir+raman": _graphs_of(queries, order, 1)}}

    def own_spectra(mol):
        q = keys.index(canonical_key(mol))
        return {m: spectra[m][q] for m in ("ir", "raman")}

    result = score_candidates(candidates, queries, top_k=10, rerank_queries=n, compute_fn=own_spectra)
    entry = result["settings"]["ir+raman"]
    assert entry["without_rerank"]["top1_accuracy"] == 0.0 and entry["without_rerank"]["top10_accuracy"] == 1.0
    assert entry["with_rerank"]["top1_accuracy"] == 1.0 and entry["rerank_failures"] == 0


def test_the_gpu_command_trains_and_samples_benchmark_candidates_without_the_chemistry_stack(queries, tmp_path):
    packs = tmp_path / "packs"
    pack = spectra_pack(STORE, split="train", limit=24)[0]
    pack.save(packs / "train.pt")
    pack.save(packs / "val.pt")
    queries.save(packs / "test.pt", compress=True)
    out = tmp_path / "out"
    script = ("import sys, runpy; sys.argv = sys.argv[1:];"
              "sys.modules.update(dict.fromkeys(('torch_geometric', 'pandas', 'pyarrow', 'rdkit', 'pymatgen', 'mlflow',"
              " 'prefect')));"
              "runpy.run_module('chemgen.training.standalone', run_name='__main__')")
    args = [sys.executable, "-c", script, "remote", "--model", "diffspectra", "--config", str(CONFIG),
            "--packs", str(packs), "--out", str(out), "--minutes", "specformer=0.03,denoiser=0.03",
            "--lr", "specformer=4e-4", "--tokens-per-batch", "128", "--benchmark", str(packs / "test.pt"),
            "--benchmark-samples", "2", "--benchmark-steps", "3", "--data", "qm9-xtb@abc"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["specformer"]["steps"] > 0 and report["denoiser"]["steps"] > 0
    candidates = load_candidates(out / "candidates.pt")
    assert set(candidates["settings"]) == set(SETTINGS) and candidates["num_steps"] == 3
    for graphs in candidates["settings"].values():
        assert torch.equal(graphs["mask"].sum(-1), queries.num_atoms.repeat_interleave(2))
    scored = score_candidates(candidates, queries, top_k=2)
    for entry in scored["settings"].values():
        assert 0.0 <= entry["metrics"]["top1_accuracy"] <= entry["metrics"]["top2_accuracy"] <= 1.0
    # the candidates command samples a trained lineage on the GPU machine too (no chemistry stack), a setting at a time
    sampler = script.replace("chemgen.training.standalone", "chemgen.models.diffspectra.candidates")
    again = tmp_path / "again.pt"
    done = subprocess.run([sys.executable, "-c", sampler, "candidates", "--model", str(out / "lineage"), "--queries",
                           str(packs / "test.pt"), "--out", str(again), "--limit", "2", "--samples", "1", "--steps", "2",
                           "--settings", "ir,raman"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resampled = load_candidates(again)
    assert list(resampled["settings"]) == ["ir", "raman"] and resampled["qm9_index"].tolist() == (
        queries.extras["system/qm9_index"][:2].tolist())
    # back here, `chemgen train import`'s scoring and gate: the queries are rebuilt from the store by index
    from chemgen.gates import gate_metrics_for
    from chemgen.training.promotion import promote_run, score_run

    run = score_run(out)
    assert set(gate_metrics_for("chemgen-diffspectra")) <= set(run["scores"]) and run["samples"] == len(queries)
    assert run["context"]["benchmark_queries"].startswith(f"{len(queries)}@") and run["context"]["sampling_steps"] == "3"
    assert {f"elucidation/{s}/valid_samples" for s in SETTINGS} <= set(run["scores"])
    decision, target = promote_run(out, run, tmp_path / "shipped" / "diffspectra-tiny")
    assert decision.promote                                      # nothing shipped yet: the first champion
    assert lineage_manifest(target)["evaluation"]["samples"] == len(queries)
    again, _ = promote_run(out, run, target)
    assert not again.promote                                     # the same scores do not beat themselves


def lineage_manifest(folder):
    from chemgen import lineage

    return lineage.read_manifest(folder)

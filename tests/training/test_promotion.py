"""Promoting a GPU run's checkpoint into the shipped lineage goes through the gate, in one context only."""

from __future__ import annotations


from types import SimpleNamespace

import pytest
import torch

from chemgen.models.specs import load_config
from chemgen import lineage
from chemgen.models.adit import ADiT
from chemgen.models.loading import load_lineage_model
from chemgen.training.promotion import promote_run

CONTEXT = {"samples": "1000", "seed": "1000", "data": "mp20@a,qm9@b", "sampling_steps": "100", "cfg_scale": "2.0"}


def _run(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    model = ADiT(load_config("tiny"))
    folder = tmp_path / name / "lineage"
    lineage.save(folder, {"vae": model.vae.state_dict(), "dit": model.dit.state_dict(),
                          "num_atoms_histogram": {"counts": torch.ones_like(model.num_atoms_histogram)}},
                 {"model": "adit", "config": model.config.to_dict(), "steps": {"vae": seed, "dit": seed}, "data": []})
    lineage.append_run(folder, {"run": name})
    return tmp_path / name


def _scored(validity: float, atoms: float = 0.9, crystals: float = 0.8, context=CONTEXT):
    return {"scores": {"molecule/edm/validity": validity, "molecule/edm/atom_stability": atoms,
                       "crystal/cdvae/valid": crystals}, "samples": 1000, "context": dict(context)}


def test_first_run_is_promoted_then_only_a_clear_improvement(tmp_path):
    target = tmp_path / "shipped"
    decision, _ = promote_run(_run(tmp_path, "a", 1), _scored(0.50), target)
    assert decision.promote and "first version" in decision.reason
    shipped = lineage.read_manifest(target)
    assert shipped["scores"]["molecule/edm/validity"] == 0.50 and shipped["evaluation"]["context"] == CONTEXT
    assert load_lineage_model(target).config.name == "adit-tiny"

    hash_a = shipped["content_hash"]
    decision, _ = promote_run(_run(tmp_path, "b", 2), _scored(0.52), target)   # within noise at n = 1000
    assert not decision.promote and lineage.read_manifest(target)["content_hash"] == hash_a

    decision, _ = promote_run(_run(tmp_path, "c", 3), _scored(0.70, crystals=0.5), target)  # crystals much worse
    assert not decision.promote and "worse" in decision.reason

    decision, _ = promote_run(_run(tmp_path, "d", 4), _scored(0.70, context={**CONTEXT, "samples": "200"}), target)
    assert not decision.promote and "context" in decision.reason

    run_e = _run(tmp_path, "e", 5)
    (run_e / "report.json").write_text('{"device": "NVIDIA H100", "vae": {"systems_per_second": 65000.0, "mfu": 0.05}}')
    scored = {**_scored(0.70), "report": {"device": "NVIDIA H100", "vae": {"systems_per_second": 65000.0, "mfu": 0.05}}}
    decision, _ = promote_run(run_e, scored, target)
    assert decision.promote
    from chemgen import tracking
    from chemgen.training.promotion import log_run

    logged = tracking.client().get_run(log_run(run_e, scored, decision, target))  # the GPU run, tracked here
    assert logged.data.params["promoted"] == "True" and logged.data.params["device"] == "NVIDIA H100"
    assert logged.data.metrics["molecule/edm/validity"] == 0.70 and logged.data.metrics["vae/mfu"] == 0.05
    shipped = lineage.read_manifest(target)
    assert shipped["steps"] == {"vae": 5, "dit": 5} and shipped["content_hash"] != hash_a
    assert [r["run"] for r in lineage.runs(target)] == ["e"]  # the run's own log (which carries its history)


def test_reconstruction_stability_of_a_perfect_reconstruction_is_the_data_stability(qm9_systems, mp20_systems, tmp_path):
    """QM9's own geometries are ~99 % EDM-stable per atom; a perfect reconstruction scores the same,
    and a 0.1 A jitter (the old VAE's error) collapses molecule stability."""
    from chemgen.data.tensors import TensorPack
    from chemgen.models.adit.diagnostics import save_reconstructions, score_reconstructions

    pack = TensorPack.from_systems([*qm9_systems[:20], *mp20_systems[:4]])
    dense = pack.dense(torch.arange(len(pack)))
    same = SimpleNamespace(**{k: getattr(dense, k) for k in ("atomic_numbers", "pos", "frac_coords", "cell", "mask")})
    scores = score_reconstructions(save_reconstructions(tmp_path / "r.pt", dense, same))
    assert scores["recon_edm_atom_stability"] == scores["true_edm_atom_stability"] > 0.95
    assert scores["recon_crystal_match_rate"] == 1.0 and scores["recon_crystal_match_rms"] < 1e-6
    torch.manual_seed(0)
    atoms = dense.mask[..., None]
    jitter = SimpleNamespace(**{**vars(same), "pos": dense.pos + 0.1 * torch.randn_like(dense.pos) * atoms,
                                "frac_coords": dense.frac_coords + 0.01 * torch.randn_like(dense.pos) * atoms})
    noisy = score_reconstructions(save_reconstructions(tmp_path / "n.pt", dense, jitter))
    assert noisy["recon_edm_molecule_stability"] < scores["true_edm_molecule_stability"] - 0.3
    assert 0.001 < noisy["recon_crystal_match_rms"] < 0.3  # ~0.05 A jitter still matches, with a finite RMS


def test_rescore_updates_only_the_shipped_scores_and_refuses_another_run(tmp_path, monkeypatch):
    from chemgen.training import promotion as runs

    target = tmp_path / "shipped"
    run_a = _run(tmp_path, "a", 1)
    promote_run(run_a, _scored(0.50), target)
    before = lineage.read_manifest(target)
    rescored = _scored(0.48, context={**CONTEXT, "scoring": "2"})
    calls = []
    monkeypatch.setattr(runs, "score_run", lambda run, store, limit: calls.append(limit) or rescored)
    runs.rescore_shipped(run_a, target=target)
    after = lineage.read_manifest(target)
    assert calls == [1000]  # the count the shipped scores were taken on
    assert after["scores"]["molecule/edm/validity"] == 0.48 and after["evaluation"]["context"]["scoring"] == "2"
    assert after["content_hash"] == before["content_hash"] and after["shards"] == before["shards"]
    assert load_lineage_model(target).config.name == "adit-tiny"   # shards still verify
    with pytest.raises(lineage.LineageError, match="did not produce"):
        runs.rescore_shipped(_run(tmp_path, "b", 2), target=target)


def test_resample_moves_the_shipped_evaluation_to_the_samples_own_context(tmp_path, monkeypatch):
    """`chemgen train rescore RUN --resample N --sampling-steps S`: the shipped checkpoint draws N new samples
    with S steps; the evaluation context is read from what the samples file records, not from the config."""
    from chemgen.training import promotion as runs
    from chemgen.io import StructureFileError
    from chemgen.scoring.report import read_structures

    target = tmp_path / "shipped"
    run_a = _run(tmp_path, "a", 1)
    promote_run(run_a, _scored(0.50, context={**CONTEXT, "samples": "1000"}), target)
    before = lineage.read_manifest(target)
    configured = str(before["config"]["flow"]["num_steps"])
    assert configured != "2"
    monkeypatch.setattr(runs, "score_samples", lambda path, *args, **kwargs: {"edm/validity": 0.25})
    scored = runs.rescore_shipped(run_a, target=target, resample=3, num_steps=2)
    after = lineage.read_manifest(target)
    assert scored["samples"] == after["evaluation"]["samples"] == 3
    assert after["evaluation"]["context"]["sampling_steps"] == "2" and after["evaluation"]["context"]["samples"] == "3"
    assert after["scores"]["molecule/edm/validity"] == 0.25 and after["content_hash"] == before["content_hash"]
    assert runs.sampling_overrides(run_a / "samples_qm9.pt") == {"num_steps": 2}

    molecules, reasons = read_structures(run_a / "samples_qm9.pt", "molecule")   # `chemgen score` reads run samples
    assert len(molecules) == len(reasons) == 3
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not a torch file")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "weights.pt")
    for bad in ("junk.pt", "weights.pt"):
        with pytest.raises(StructureFileError, match=f"{bad}: not a chemgen samples file"):
            read_structures(tmp_path / bad, "molecule")

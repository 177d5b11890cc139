"""Lineages: sharded safetensors checkpoints with a manifest and a run log, and ADiT trained through one."""

from __future__ import annotations

import json
import os

import pytest
import torch

from chemgen import lineage
from chemgen.lineage import LineageError


def _groups() -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return {"encoder": {"w": torch.randn(300, 300), "b": torch.randn(300)},
            "decoder": {"w": torch.randn(300, 300)}, "stats": {"counts": torch.arange(10)}}


def test_round_trip_shards_and_hashes(tmp_path):
    groups = _groups()
    manifest = lineage.save(tmp_path, groups, {"model": "toy", "steps": {"all": 5}}, max_shard_bytes=200_000)
    # bf16: 300x300 = 180 kB per matrix, so the two matrices cannot share a 200 kB shard.
    assert len(manifest["shards"]) == 2 and all(s["bytes"] < 200_000 + 1024 for s in manifest["shards"])
    assert [len(s["tensors"]) for s in manifest["shards"]] == [2, 2]
    umask = os.umask(0)
    os.umask(umask)
    for shard in manifest["shards"]:   # readable as any file the umask allows, not safetensors' 0600
        assert (tmp_path / shard["file"]).stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = lineage.load(tmp_path)
    assert loaded.steps == {"all": 5} and loaded.groups["stats"]["counts"].dtype == torch.int64
    for group, state in groups.items():
        for name, tensor in state.items():
            expected = tensor.to(torch.bfloat16).to(tensor.dtype) if tensor.is_floating_point() else tensor
            assert torch.equal(loaded.groups[group][name], expected.to(loaded.groups[group][name].dtype))


def test_resave_replaces_shards_and_keeps_the_log(tmp_path):
    lineage.save(tmp_path, _groups(), {"model": "toy"})
    lineage.append_run(tmp_path, {"steps": 5, "device": "cpu"})
    groups = _groups()
    groups["decoder"]["w"] = groups["decoder"]["w"] + 1
    manifest = lineage.save(tmp_path, groups, {"model": "toy"})
    lineage.append_run(tmp_path, {"steps": 10, "device": "cpu"})
    on_disk = sorted(p.name for p in tmp_path.glob("weights-*.safetensors"))
    assert on_disk == sorted(s["file"] for s in manifest["shards"])     # the old shard is gone
    assert [r["steps"] for r in lineage.runs(tmp_path)] == [5, 10]


def test_corruption_and_missing_files_are_named(tmp_path):
    manifest = lineage.save(tmp_path, _groups(), {"model": "toy"})
    shard = tmp_path / manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-3] + b"xyz")
    with pytest.raises(LineageError, match="content hash differs"):
        lineage.load(tmp_path)
    shard.unlink()
    with pytest.raises(LineageError, match="missing"):
        lineage.load(tmp_path)
    with pytest.raises(LineageError, match="not a lineage"):
        lineage.load(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(LineageError, match="format"):
        lineage.read_manifest(tmp_path)
    with pytest.raises(LineageError, match="more than a"):
        lineage.save(tmp_path / "big", {"g": {"w": torch.zeros(1000, 1000)}}, {}, max_shard_bytes=100_000)


def test_adit_trains_through_a_lineage(qm9_systems, mp20_systems, tmp_path):
    """Two runs on two "machines": the second starts from the first's lineage, steps and run log accumulate,
    and the lineage loads as a model that samples."""
    from chemgen.data.tensors import TensorPack
    from chemgen.models.loading import load_lineage_model
    from chemgen.samples import to_systems
    from chemgen.training.stages import finish_run, train_stages
    from tests.models.test_adit import small_config

    pack = TensorPack.from_systems([*qm9_systems[:8], *mp20_systems[:8]])
    config = small_config()
    quiet = dict(tokens_per_batch=256, device="cpu", log=lambda line: None)
    model, report = train_stages("adit", config, pack, pack, tmp_path / "run1", steps={"vae": 5, "dit": 5}, **quiet)
    finish_run(tmp_path / "run1" / "lineage", report, 0.1)
    first = tmp_path / "run1" / "lineage"
    loaded = load_lineage_model(first)
    a = model.generate(4, "molecule", seed=3)
    b = loaded.generate(4, "molecule", seed=3)
    assert torch.equal(a.mask, b.mask)                       # same sizes drawn from the same histogram
    assert (a.pos - b.pos).abs().max() < 0.25                # bf16 weights: close, not bit-identical
    # A second run on another machine starts from the lineage, not from scratch.
    _, report = train_stages("adit", config, pack, pack, tmp_path / "run2", init=first, steps={"dit": 5}, **quiet)
    finish_run(tmp_path / "run2" / "lineage", report, 0.1)
    second = tmp_path / "run2" / "lineage"
    assert [r["steps"]["dit"] for r in lineage.runs(second)] == [5, 10]
    assert lineage.read_manifest(second)["steps"] == {"vae": 5, "dit": 10}
    assert len(to_systems(load_lineage_model(second).generate(2, "crystal", seed=0), "mp20")) == 2
    with pytest.raises(FileNotFoundError, match="not a trained model"):
        load_lineage_model(tmp_path / "run2")

"""Data-parallel training on two CPU processes (gloo, launched by torchrun) against one process on the same global
batch, and a real model's run under torchrun whose lineage only rank 0 writes."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chemgen import lineage
from chemgen.data.tensors import TensorPack
from chemgen.training.distributed import World, world
from chemgen.training.resident import ResidentBatches

from tests.training import ddp_fit

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def pack(qm9_systems, mp20_systems) -> TensorPack:
    return TensorPack.from_systems([*qm9_systems[:40], *mp20_systems[:24]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), *args]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(Path.home())}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def _cat(a, b):
    """Two ranks' batches of one bucket as one batch (the global batch)."""
    joined = {f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(a)
              if f.name != "extras"}
    return type(a)(**joined, extras={k: torch.cat([a.extras[k], b.extras[k]]) for k in a.extras})


class GlobalBatches:
    """What both ranks draw, step by step, as one process's data: the single-process side of the comparison."""

    def __init__(self, shards: list[ResidentBatches]):
        self.shards, self.device, self.buckets = shards, shards[0].device, shards[0].buckets
        self.mean_batch_tokens = 2 * shards[0].mean_batch_tokens

    def sample(self):
        return _cat(*(shard.sample() for shard in self.shards))


def test_without_a_launcher_the_world_is_one_process(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    here = world()
    assert (here.size, here.rank, here.distributed, here.is_zero) == (1, 0, False, True)


def test_each_rank_holds_its_own_shard_of_every_bucket(pack):
    whole = ResidentBatches(pack, "cpu", tokens_per_batch=256, seed=3)
    shards = [ResidentBatches(pack, "cpu", tokens_per_batch=256, seed=3, world=World(2, r, r, 2)) for r in (0, 1)]
    assert [b.size for b in shards[0].buckets] == [b.size for b in shards[1].buckets]
    assert shards[0].weights == shards[1].weights
    for mine, theirs, full in zip(shards[0].buckets, shards[1].buckets, whole.buckets):
        # disjoint halves that make up the bucket; each rank takes half the global batch
        assert len(mine.batch.mask) + len(theirs.batch.mask) == len(full.batch.mask)
        ids = lambda b: {tuple(r.tolist()) for r in b.batch.pos.flatten(1)}  # noqa: E731
        assert not ids(mine) & ids(theirs) and ids(mine) | ids(theirs) == ids(full)
        assert mine.batch_size == theirs.batch_size == full.batch_size // 2
    # both ranks draw the same bucket at every step, from their own systems
    for _ in range(20):
        a, b = shards[0].sample(), shards[1].sample()
        assert a.mask.shape == b.mask.shape
    assert shards[0].mean_batch_size == pytest.approx(whole.mean_batch_size)


def test_two_gloo_processes_train_to_the_single_process_result_on_the_same_global_batch(pack, tmp_path):
    pack.save(tmp_path / "train.pt")
    done = _torchrun("tests/training/ddp_fit.py", str(tmp_path / "train.pt"), str(tmp_path))
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert ranks["world"] == 2 and len(ranks["losses"]) == ddp_fit.STEPS

    shards = [ResidentBatches(pack, "cpu", tokens_per_batch=256, seed=3, world=World(2, r, r, 2)) for r in (0, 1)]
    assert ranks["local_systems"] == len(shards[0].buckets[0].batch.mask)   # rank 0 held half a bucket, not all
    model, ema, result = ddp_fit.train(GlobalBatches(shards))
    assert ranks["systems"] == result.systems   # every rank's systems counted
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ranks["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for theirs, mine in zip(ranks["ema"], ema.state()["shadow"]):
        torch.testing.assert_close(theirs, mine, rtol=1e-5, atol=1e-6)
    assert [s for s, _ in ranks["losses"]] == [s for s, _ in result.losses]
    assert [v for _, v in ranks["losses"]] == pytest.approx([v for _, v in result.losses], rel=1e-4)   # float32 sums in another order
    # and training moved the weights: the comparison is not between two untouched initialisations
    torch.manual_seed(0)
    initial = ddp_fit.AtomCountRegressor().state_dict()
    assert not torch.allclose(initial["head.2.weight"], model.state_dict()["head.2.weight"])


def test_a_real_model_trains_under_torchrun_and_only_rank_0_writes_the_lineage(pack, tmp_path):
    """The GPU runner under torchrun with two CPU processes on a time budget: the ranks agree on when each stage
    ends (rank 0's clock), and one lineage with one run in its log comes out, with the samples and the report."""
    packs = tmp_path / "packs"
    pack.save(packs / "train.pt")
    pack.save(packs / "val.pt")
    out = tmp_path / "out"
    done = _torchrun("-m", "chemgen.training.standalone", "--packs", str(packs), "--out", str(out), "--config",
                     str(ROOT / "chemgen" / "configs" / "adit-tiny.yaml"), "--model", "adit",
                     "--minutes", "vae=0.15,dit=0.1", "--samples", "4", "--sample-batch", "4", "--steps", "4",
                     "--tokens-per-batch", "256")
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["vae"]["steps"] > 0 and report["dit"]["steps"] > 0
    checkpoint = lineage.load(out / "lineage")
    assert checkpoint.steps == {"vae": report["vae"]["steps"], "dit": report["dit"]["steps"]}
    assert len(lineage.runs(out / "lineage")) == 1     # one run, written once
    assert done.stdout.count('"processes": 2') == 1     # rank 0 alone reports
    assert {p.name for p in out.iterdir()} - {"checkpoints"} == {"lineage", "reconstructions.pt", "report.json",
                                                                 "samples_mp20.pt", "samples_qm9.pt"}
    assert not [p for p in (out / "checkpoints").rglob("*") if p.is_file()]   # each stage's went into the lineage

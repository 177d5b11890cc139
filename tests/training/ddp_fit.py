"""One data-parallel fit of a small deterministic regression on real QM9/MP-20 systems, as each rank runs it.

``python -m torch.distributed.run --nproc-per-node 2 tests/training/ddp_fit.py PACK OUT`` trains on two CPU
processes (gloo); rank 0 saves the weights, the EMA and the losses to OUT. The test runs the same fit in one
process on the concatenation of both ranks' draws (the same global batch) and compares. The loss has no noise
(no diffusion time, no latent sample), so the two must agree to float precision.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

STEPS = 6


class AtomCountRegressor(nn.Module):
    """Predicts a system's mean distance of atoms to their centroid from its element embeddings: a per-system
    mean squared error, so the mean over a global batch is the mean of the ranks' equal-sized halves."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.head = nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 1))

    def loss(self, batch) -> dict[str, torch.Tensor]:
        mask = batch.mask.float()
        pooled = (self.embed(batch.atomic_numbers) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        centre = (batch.pos * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        radius = ((batch.pos - centre[:, None]).norm(dim=-1) * mask).sum(1) / mask.sum(1)
        return {"loss": ((self.head(pooled).squeeze(-1) - radius) ** 2).mean()}


def train(data, world=None):
    """The fit both runs share: same initial weights, schedule and EMA."""
    from chemgen.training.loop import EMA, WSDSchedule, fit

    torch.manual_seed(0)
    model = AtomCountRegressor()
    ema = EMA(model, 0.9)
    result = fit(model.loss, model.parameters(), data, schedule=WSDSchedule(1e-2, warmup_steps=1, decay_fraction=0.5),
                 max_steps=STEPS, ema=ema, bf16=False, log_every=1, log=lambda line: None, model=model, world=world)
    return model, ema, result


def main(pack_path: str, out: str) -> None:
    from chemgen.data.tensors import TensorPack
    from chemgen.training.distributed import world as launched_world
    from chemgen.training.resident import ResidentBatches

    world = launched_world()
    data = ResidentBatches(TensorPack.load(pack_path), "cpu", tokens_per_batch=256, seed=3, world=world)
    model, ema, result = train(data, world)
    if world.is_zero:
        torch.save({"weights": model.state_dict(), "ema": ema.state()["shadow"], "losses": result.losses,
                    "systems": result.systems, "world": world.size, "local_systems": len(data.buckets[0].batch.mask)},
                   Path(out) / "rank0.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])

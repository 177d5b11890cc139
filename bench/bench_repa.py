"""Does REPA make ADiT's DiT converge in fewer steps? A/B at equal steps on the frozen shipped VAE.

Trains the same fresh DiT (same seed, same batches) with and without REPA's alignment term (Yu et al.
2025: the DiT's hidden states after block ``repa_depth``, through an MLP, aligned with the frozen VAE
encoder's states by cosine similarity, weight ``--weight``), on the real tensor packs (`make gpu-packs`),
then measures the EMA-free DiT's clean-latent error at t = 0.5 / 0.9 / 0.99 on held-out molecules and
crystals (`chemgen.models.adit.diagnostics.dit_prediction_error`, in latent standard deviations).

    OMP_NUM_THREADS=1 python bench/bench_repa.py --packs .packs/full --steps 300 [--width 128 --layers 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch

from chemgen.data.tensors import TensorPack
from chemgen.models.loading import load_lineage_model
from chemgen.training.resident import ResidentBatches
from chemgen.models.loading import shipped_model
from chemgen.training.loop import WSDSchedule, fit
from chemgen.models.adit import ADiT
from chemgen.models.adit.diagnostics import dit_prediction_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=8e-4)
    args = parser.parse_args()
    shipped = load_lineage_model(shipped_model("adit"))
    train, val = TensorPack.load(args.packs / "train.pt"), TensorPack.load(args.packs / "val.pt")
    held_out = val.held_out(256)
    print(f"DiT width {args.width}, {args.layers} layers, {args.steps} steps of ~{args.tokens_per_batch} padded atoms; "
          f"REPA weight {args.weight} at depth {args.depth}; threads {torch.get_num_threads()}")
    for weight in (0.0, args.weight):
        base = shipped.config
        dit = dataclasses.replace(base.dit, d_model=args.width, num_layers=args.layers, num_heads=4,
                                  repa_weight=weight, repa_depth=args.depth)
        torch.manual_seed(0)
        model = ADiT(dataclasses.replace(base, dit=dit))
        model.vae.load_state_dict(shipped.vae.state_dict())
        stage = model.training_stage("dit", train, trained=("vae",))
        data = ResidentBatches(train, "cpu", tokens_per_batch=args.tokens_per_batch, oversample={"mp20": 3}, seed=0)
        torch.manual_seed(1)
        result = fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(args.lr, 100, 0.2),
                     max_steps=args.steps, log_every=10**9, log=lambda line: None, model=model)
        model.eval()
        errors = dit_prediction_error(model, held_out)
        print(f"REPA {weight:>4}: {result.steps} steps in {result.seconds:.0f} s, final loss {result.losses[-1][1]:.4f}; "
              + ", ".join(f"{k} {v:.4f}" for k, v in errors.items()) + f"; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

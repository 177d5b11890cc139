"""Training throughput of chemgen's loop (`chemgen.training.loop.fit`) against a bare PyTorch loop.

Both loops train the same model on the same resident batches (real QM9 + MP-20 systems from tensor
packs, `chemgen train packs`) for the same number of steps; the bare loop is what anyone would
write: forward, backward, clip, AdamW step, no autocast, no EMA. Prints systems/s for each and their
ratio, the model FLOP utilisation where the chip's peak is known (H100/H200), the torch thread setting
and the 1-minute load average beside every figure.

    OMP_NUM_THREADS=1 python bench/bench_training.py --packs .packs/full --config gpu-quick --steps 30
    python bench/bench_training.py --packs .packs/full --device cuda --steps 300 [--compile]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from chemgen.models.specs import load_config
from chemgen.data.tensors import TensorPack
from chemgen.training.resident import ResidentBatches
from chemgen.training.loop import EMA, WSDSchedule, fit
from chemgen.models.adit import ADiT


def setting() -> str:
    return f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"


def bare_loop(loss_fn, params, data: ResidentBatches, steps: int, lr: float, clip: float) -> float:
    """systems/s of the plain loop: one host read of the loss per step, as a logging loop does."""
    optimizer = torch.optim.AdamW(params, lr=lr)
    systems, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = data.sample()
        loss = loss_fn(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        loss.item()  # what a progress bar reads every step
        systems += batch.mask.shape[0]
    return systems / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, required=True)
    parser.add_argument("--config", default="gpu-quick")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="default: 65,536 on CUDA, 4,096 on CPU")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    tokens = args.tokens_per_batch or (65_536 if device.type == "cuda" else 4_096)
    config = load_config(args.config)
    data = ResidentBatches(TensorPack.load(args.packs / "train.pt"), device, tokens_per_batch=tokens,
                           oversample={"mp20": 3})
    print(f"{config.name} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{data.mean_batch_size:.0f} systems / {data.mean_batch_tokens:.0f} padded atoms per step, {setting()}")
    for stage in ("vae", "dit"):
        torch.manual_seed(0)
        model = ADiT(config).to(device)
        if stage == "vae":
            model.vae.train()
            loss_fn, params, ema = (lambda b: model.vae.loss(b, train=True)), list(model.vae.parameters()), None
        else:
            model.train()
            model.freeze_vae()
            loss_fn, params, ema = model.dit_loss, list(model.dit.parameters()), EMA(model.dit, 0.999)
        bare = bare_loop(loss_fn, params, data, args.steps, 1e-4, 10.0)
        result = fit(loss_fn, params, data, schedule=WSDSchedule(1e-4, 10, 0.0), max_steps=args.steps,
                     ema=ema, compile=args.compile, log_every=10**9, log=print)
        mfu = f", MFU {100 * result.mfu:.1f} %" if result.mfu is not None else ""
        print(f"{stage}: chemgen {result.systems_per_second:,.0f} systems/s{mfu} "
              f"(compile {result.compile_seconds:.0f} s), bare loop {bare:,.0f} systems/s, "
              f"ratio {result.systems_per_second / bare:.2f}; {setting()}")


if __name__ == "__main__":
    main()

"""GFMDiff's throughput: training (molecules/s through `chemgen.training.loop.fit`, with MFU where the
chip's peak is known) and ancestral sampling (seconds per 1,000 molecules at T steps), at each thread count.

Molecules are the QM9 systems of a tensor pack (`chemgen train packs`; crystals in a mixed pack are left
out). Each figure is printed with the torch thread setting and the 1-minute load average beside it, since
this machine's cores are shared.

    python bench/bench_gfmdiff.py --packs .packs/gfmdiff --config cpu --threads 1 --threads 2
    python bench/bench_gfmdiff.py --packs .packs/gfmdiff --device cuda --steps 200 --sample-n 1000
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
from chemgen.models.gfmdiff import GFMDiff


def setting() -> str:
    return f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, required=True)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeatable; CPU)")
    parser.add_argument("--steps", type=int, default=10, help="training steps to time (after 2 warm-up steps)")
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="default: 8,192 on CUDA, 512 on CPU")
    parser.add_argument("--sample-n", type=int, default=16, help="molecules to sample")
    parser.add_argument("--sample-steps", type=int, default=None, help="default: the config's (T = 500)")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = load_config(args.config, "gfmdiff")
    pack = TensorPack.load(args.packs / "train.pt")
    pack = pack.subset(torch.nonzero(~pack.pbc).squeeze(-1))
    tokens = args.tokens_per_batch or (8_192 if device.type == "cuda" else 512)
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = GFMDiff(config).to(device)
        stage = model.training_stage("denoiser", pack)
        data = ResidentBatches(pack, device, tokens_per_batch=tokens)
        fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(1e-4, 1, 0.0), max_steps=2, log=lambda _: None)
        result = fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(1e-4, 1, 0.0), max_steps=args.steps,
                     ema=EMA(stage.ema_module, 0.999), log_every=10**9, log=lambda _: None)
        mfu = f", MFU {100 * result.mfu:.1f} %" if result.mfu is not None else ""
        print(f"{config.name} training on {device}: {result.systems_per_second:,.1f} molecules/s "
              f"({data.mean_batch_size:.0f} molecules / {data.mean_batch_tokens:.0f} padded atoms per step){mfu}; "
              f"{setting()}", flush=True)

        model.eval()
        steps = args.sample_steps or config.diffusion.num_steps
        start = time.perf_counter()
        model.generate(args.sample_n, "qm9", num_steps=steps, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        print(f"{config.name} sampling on {device}: {args.sample_n} molecules x {steps} steps in {seconds:.1f} s = "
              f"{1000 * seconds / args.sample_n:,.0f} s per 1,000 molecules ({args.sample_n / seconds:.2f}/s); "
              f"{setting()}", flush=True)


if __name__ == "__main__":
    main()

"""DiffSpectra's throughput: training of both stages (molecules/s through `chemgen.training.loop.fit`, with MFU
where the chip's peak is known) and conditional sampling (seconds per 1,000 molecules at the config's steps).

Molecules are the spectra pack's (`chemgen.models.diffspectra.data.spectra_pack`): a saved pack (``--pack``) or the
first ``--limit`` molecules of the store's train split, read here (RDKit perceives each graph: about 30 ms a
molecule). Each figure is printed with the torch thread setting and the 1-minute load average beside it, since
this machine's cores are shared.

    python bench/bench_diffspectra.py --config cpu --threads 1 --limit 512
    python bench/bench_diffspectra.py --pack .packs/diffspectra/train.pt --device cuda --steps 200 --sample-n 256
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from chemgen.data.tensors import TensorPack
from chemgen.training.resident import ResidentBatches
from chemgen.training.loop import EMA, WSDSchedule, fit
from chemgen.models.diffspectra.config import preset
from chemgen.models.diffspectra.model import DiffSpectra

STORE = Path(__file__).resolve().parents[1] / "datasets" / "spectra" / "qm9-xtb"


def setting() -> str:
    return f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, help="a saved spectra pack (default: read --limit molecules)")
    parser.add_argument("--limit", type=int, default=512, help="molecules read from the store without --pack")
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, action="append", help="torch threads (repeatable; CPU)")
    parser.add_argument("--steps", type=int, default=10, help="training steps to time per stage (after 2 warm-up steps)")
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="default: 4,096 on CUDA, 512 on CPU")
    parser.add_argument("--sample-n", type=int, default=8, help="molecules to sample")
    parser.add_argument("--sample-steps", type=int, default=None, help="default: the config's (1,000)")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = preset(args.config)
    if args.pack is not None:
        pack = TensorPack.load(args.pack)
    else:
        from chemgen.models.diffspectra.data import spectra_pack

        pack, report = spectra_pack(STORE, split="train", limit=args.limit)
        print(f"pack: {report.summary()}", flush=True)
    tokens = args.tokens_per_batch or (4_096 if device.type == "cuda" else 512)
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = DiffSpectra(config).to(device)
        data = ResidentBatches(pack, device, tokens_per_batch=tokens)
        for name in model.stage_names:
            stage = model.training_stage(name, pack)
            fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(1e-4, 1, 0.0), max_steps=2, log=lambda _: None)
            ema = EMA(stage.ema_module, stage.ema_decay) if stage.ema_module is not None else None
            result = fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(1e-4, 1, 0.0), max_steps=args.steps,
                         ema=ema, log_every=10**9, log=lambda _: None)
            mfu = f", MFU {100 * result.mfu:.1f} %" if result.mfu is not None else ""
            print(f"{config.name} stage {name} on {device}: {result.systems_per_second:,.1f} molecules/s "
                  f"({data.mean_batch_size:.0f} molecules / {data.mean_batch_tokens:.0f} padded atoms per step){mfu}; "
                  f"{setting()}", flush=True)

        model.eval()
        steps = args.sample_steps or config.diffusion.num_steps
        batch = pack.dense(torch.arange(min(args.sample_n, len(pack)))).to(device)
        spectra, present = model.spectra_of(batch)
        start = time.perf_counter()
        model.sample_graphs(spectra, present, num_samples=1, num_atoms=batch.num_atoms.cpu(), num_steps=steps, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        n = len(batch.mask)
        print(f"{config.name} sampling on {device}: {n} molecules x {steps} steps in {seconds:.1f} s = "
              f"{1000 * seconds / n:,.0f} s per 1,000 molecules ({n / seconds:.2f}/s); {setting()}", flush=True)


if __name__ == "__main__":
    main()

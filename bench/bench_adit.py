"""ADiT throughput: training steps and sampling, by config, kind, ODE steps and solver.

Runs on random-weight models over real curated systems (throughput does not depend on the
weights). Prints a table with the torch thread setting; on CUDA also peak GPU memory.

    OMP_NUM_THREADS=1 python bench/bench_adit.py [--configs tiny cpu gpu-quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from chemgen.config import load_config
from chemgen.data.qm9 import iter_qm9, read_qm9_frame
from chemgen.data.tensors import TensorPack
from chemgen.models.adit import ADiT


def real_pack(n: int = 256) -> TensorPack:
    """QM9 molecules plus MP-20 crystals (the latter from the shared CSVs), half and half."""
    import pandas as pd

    from chemgen.data.crystals import default_data_dir, iter_crystals

    molecules = [s for _, s in iter_qm9(read_qm9_frame(limit=n // 2))]
    rows = pd.read_csv(default_data_dir() / "mp_20" / "val.csv.gz", nrows=n // 2)
    crystals = [s for _, s in iter_crystals("mp20", rows, "val")]
    return TensorPack.from_systems(molecules + crystals)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["tiny", "cpu", "gpu-quick"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    pack = real_pack()
    batch = pack.dense(torch.randperm(len(pack), generator=torch.Generator().manual_seed(0))[: args.batch])
    batch = type(batch)(**{k: v.to(device) for k, v in vars(batch).items()})
    print(f"device={device} torch_threads={torch.get_num_threads()} batch={args.batch} samples={args.samples}")
    print(f"{'config':<10} {'params(M)':>9} {'vae train/s':>12} {'dit train/s':>12} {'kind':<9} {'solver':<6} "
          f"{'steps':>5} {'samples/s':>10}")
    for name in args.configs:
        config = load_config(name)
        model = ADiT(config).to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        vae_opt = torch.optim.AdamW(model.vae.parameters(), lr=1e-4)
        dit_opt = torch.optim.AdamW(model.dit.parameters(), lr=1e-4)

        def vae_step():
            loss = model.vae.loss(batch)["loss"]
            vae_opt.zero_grad()
            loss.backward()
            vae_opt.step()

        def dit_step():
            loss = model.dit_loss(batch)["loss"]
            dit_opt.zero_grad()
            loss.backward()
            dit_opt.step()

        model.train()
        vae_rate = args.batch / timed(vae_step, 3)
        model.freeze_vae()
        dit_rate = args.batch / timed(dit_step, 3)
        model.eval()
        model.num_atoms_histogram[1] = pack.num_atoms_histogram(1, 64).float().to(device)
        model.num_atoms_histogram[2] = pack.num_atoms_histogram(2, 64).float().to(device)
        for kind in ("molecule", "crystal"):
            for solver, steps in (("euler", 100), ("euler", 25), ("heun", 25)):
                seconds = timed(lambda: model.generate(args.samples, kind, num_steps=steps, solver=solver, seed=0), 1)
                print(f"{name:<10} {params:>9.2f} {vae_rate:>12.1f} {dit_rate:>12.1f} {kind:<9} {solver:<6} "
                      f"{steps:>5} {args.samples / seconds:>10.1f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB" + (f", peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                         if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()

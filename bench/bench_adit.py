"""ADiT throughput: training steps and sampling, by config, kind, ODE steps and solver.

Runs on random-weight models over real systems (throughput does not depend on the weights):
QM9 molecules drawn at random from EDM's train split, sampled sizes drawn from its whole size
histogram. Prints the mean sampled size, the torch thread setting and the 1-minute load average
beside every figure; on CUDA also peak GPU memory.

    OMP_NUM_THREADS=1 python bench/bench_adit.py [--configs tiny cpu gpu-quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from chemgen.models.specs import load_config
from chemgen.data.qm9 import iter_qm9, read_qm9_frame
from chemgen.data.tensors import TensorPack
from chemgen.models.adit import ADiT
from chemgen.models.adit.model import MAX_ATOMS


def real_pack(n: int = 256, seed: int = 0) -> tuple[TensorPack, torch.Tensor]:
    """QM9 molecules drawn at random from EDM's train split plus MP-20 crystals drawn from val, half and half,
    and the size histogram of the whole QM9 train split (index = number of atoms).

    The first QM9 rows are the smallest molecules (GDB order: mean 10 atoms against QM9's 18), which
    would inflate every rate: draw at random, and sample sizes from the training histogram.
    """
    import pandas as pd

    from chemgen.data.crystals import default_data_dir, iter_crystals
    from chemgen.data.qm9 import edm_split

    frame = read_qm9_frame()
    train = frame.iloc[edm_split()["train"]]
    molecules = [s for _, s in iter_qm9(train.sample(n=n // 2, random_state=seed))]
    rows = pd.read_csv(default_data_dir() / "mp_20" / "val.csv.gz").sample(n=n // 2, random_state=seed)
    crystals = [s for _, s in iter_crystals("mp20", rows, "val")]
    qm9_sizes = torch.bincount(torch.tensor(train.N_atoms.to_numpy()), minlength=MAX_ATOMS + 1)[: MAX_ATOMS + 1]
    return TensorPack.from_systems(molecules + crystals), qm9_sizes.float()


def setting() -> str:
    """Threads and machine load, printed beside every figure (a busy 2-core machine halves rates)."""
    return f"{torch.get_num_threads():>7} {os.getloadavg()[0]:>5.2f}"


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
    pack, qm9_sizes = real_pack()
    batch = pack.dense(torch.randperm(len(pack), generator=torch.Generator().manual_seed(0))[: args.batch])
    batch = type(batch)(**{k: v.to(device) for k, v in vars(batch).items()})
    print(f"device={device} torch_threads={torch.get_num_threads()} batch={args.batch} samples={args.samples}")
    print(f"{'config':<10} {'params(M)':>9} {'vae train/s':>12} {'dit train/s':>12} {'kind':<9} {'solver':<6} "
          f"{'steps':>5} {'samples/s':>10} {'mean N':>6} {'threads':>7} {'load1':>5}")
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
        model.num_atoms_histogram[1] = pack.num_atoms_histogram(1, MAX_ATOMS).float().to(device)  # 128 random crystals
        model.num_atoms_histogram[2] = qm9_sizes.to(device)                                      # all QM9 train sizes
        for kind in ("molecule", "crystal"):
            for solver, steps in (("euler", 100), ("euler", 25), ("heun", 25)):
                out = {}

                def sample():
                    out["decoded"] = model.generate(args.samples, kind, num_steps=steps, solver=solver, seed=0)

                seconds = timed(sample, 1)
                mean_atoms = out["decoded"].mask.sum(1).float().mean().item()
                print(f"{name:<10} {params:>9.2f} {vae_rate:>12.1f} {dit_rate:>12.1f} {kind:<9} {solver:<6} "
                      f"{steps:>5} {args.samples / seconds:>10.1f} {mean_atoms:>6.1f} {setting()}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB" + (f", peak GPU {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                                         if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()

"""ADiT sampling time per 1,000 QM9-sized molecules: chemgen's size-sorted chunks against one padded batch.

The reference implementation integrates a batch padded to its largest system; chemgen sorts the drawn
sizes and integrates chunks that each pad to their own largest system (`ADiT.generate`, ``chunk_size``).
Both run here on the same random-weight model (time does not depend on the weights), the same sizes
(drawn from EDM's QM9 training histogram, seed 0), the same solver, steps and CFG scale, one after the
other in one process, so they share the machine's load; threads and load are printed beside each figure.
The issue's side-by-side measurement of the reference (DiT-S + the paper's VAE, 100 Euler steps, CFG 2,
one thread) is printed for scale: 2,063 s per 1,000 molecules.

    OMP_NUM_THREADS=1 python bench/bench_sampling.py --config dit-s --samples 256 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from chemgen.models.specs import load_config
from chemgen.models.adit import ADiT
from chemgen.models.adit.model import MAX_ATOMS

REFERENCE_SECONDS_PER_1000 = 2063.0   # reference ADiT, DiT-S + paper VAE, 100 Euler steps, CFG 2, one thread


def qm9_size_histogram() -> torch.Tensor:
    """Sizes of EDM's 100,000 QM9 training molecules (atoms with hydrogens)."""
    from chemgen.data.qm9 import edm_split, read_qm9_frame

    frame = read_qm9_frame()
    sizes = torch.as_tensor(frame.iloc[edm_split()["train"]].N_atoms.to_numpy())
    return torch.bincount(sizes, minlength=MAX_ATOMS + 1)[: MAX_ATOMS + 1].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dit-s")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="Euler steps (times are scaled to 100 steps)")
    parser.add_argument("--chunk", type=int, default=64, help="chemgen's chunk size (default in ADiT.generate: 128)")
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ADiT(load_config(args.config)).eval()
    model.num_atoms_histogram[2] = qm9_size_histogram()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.config}: {params:.1f} M parameters, {args.samples} QM9-sized samples, {args.steps} Euler steps, "
          f"CFG {args.cfg_scale}")
    times = {}
    for label, chunk in (("one padded batch (reference)", args.samples), (f"sorted chunks of {args.chunk}", args.chunk)):
        start = time.perf_counter()
        out = model.generate(args.samples, "qm9", num_steps=args.steps, solver="euler", cfg_scale=args.cfg_scale,
                             seed=0, chunk_size=chunk)
        seconds = time.perf_counter() - start
        per_1000_at_100 = seconds / args.samples * 1000 * 100 / args.steps
        times[label] = per_1000_at_100
        print(f"{label:<30} {seconds:7.1f} s -> {per_1000_at_100:7.0f} s per 1,000 molecules at 100 steps "
              f"(mean N {out.mask.sum(1).float().mean():.1f}); threads {torch.get_num_threads()}, "
              f"load {os.getloadavg()[0]:.2f}")
    plain, chunked = times.values()
    print(f"speed-up of chunking: {plain / chunked:.2f}x; the reference measured side by side: "
          f"{REFERENCE_SECONDS_PER_1000:.0f} s per 1,000 molecules")


if __name__ == "__main__":
    main()

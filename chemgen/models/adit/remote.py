"""Train and sample ADiT from tensor packs on a machine with only torch and lightning.

GPU machines here lack the chemistry stack (RDKit, pymatgen, pyarrow, MLflow), so a CPU
machine curates the data into tensor packs (``chemgen train adit-packs``), this module
trains both stages under a time budget and writes generated samples as tensors, and the
CPU machine scores, registers and logs them.

    python -m chemgen.models.adit.remote --packs packs/ --out out/ --config dit-s \\
        --vae-minutes 3 --dit-minutes 4 --samples 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chemgen.config import load_config
from chemgen.data.tensors import TensorPack
from chemgen.models.adit.train import export_model_dir, load_adit, train_dit, train_vae


def save_samples(model, kind: str, n: int, path: Path, batch_size: int, seed: int, **sampling) -> dict[str, float]:
    """Generate n samples in batches; save padded tensors; return throughput."""
    chunks, start = [], time.perf_counter()
    for i, first in enumerate(range(0, n, batch_size)):
        decoded = model.generate(min(batch_size, n - first), kind, seed=seed + i, **sampling)
        chunks.append({k: getattr(decoded, k).cpu() for k in ("atomic_numbers", "pos", "frac_coords", "cell", "mask", "periodic")})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    width = max(c["mask"].shape[1] for c in chunks)

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.dim() < 2 or t.shape[1] == width or t.shape[1:] == (3, 3):
            return t
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]))

    merged = {k: torch.cat([pad(c[k]) for c in chunks]) for k in chunks[0]}
    torch.save({"format": 1, "kind": kind, **merged}, path)
    return {"samples": n, "seconds": seconds, "samples_per_second": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, required=True, help="folder with train.pt and val.pt tensor packs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="dit-s")
    parser.add_argument("--vae-minutes", type=float, default=3.0)
    parser.add_argument("--dit-minutes", type=float, default=4.0)
    parser.add_argument("--samples", type=int, default=1000, help="samples of each kind")
    parser.add_argument("--sample-batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=None, help="ODE steps (default: config)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--init", type=Path, default=None,
                        help="model directory to continue from: its VAE is kept and its DiT warm-starts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adit-work"), help="checkpoints (not brought back)")
    args = parser.parse_args()

    torch.set_float32_matmul_precision("high")
    config = load_config(args.config)
    train, val = TensorPack.load(args.packs / "train.pt"), TensorPack.load(args.packs / "val.pt")
    report: dict[str, object] = {"config": config.name, "train_systems": len(train), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if args.init is None:
        vae = train_vae(config, train, val, args.work / "vae", devices=args.devices, max_minutes=args.vae_minutes,
                        progress=False)
        report["vae"] = {"steps": vae.steps, "seconds": vae.seconds, "systems_per_second": vae.systems_per_second,
                         "metrics": vae.metrics}
        print(json.dumps(report["vae"], indent=1), flush=True)
        vae_path = vae.export_path
    else:
        vae_path, report["init"] = args.init / "vae.pt", str(args.init)
    dit = train_dit(config, vae_path, train, val, args.work / "dit", devices=args.devices,
                    max_minutes=args.dit_minutes, progress=False, init_from=args.init)
    report["dit"] = {"steps": dit.steps, "seconds": dit.seconds, "systems_per_second": dit.systems_per_second, "metrics": dit.metrics}
    print(json.dumps(report["dit"], indent=1), flush=True)
    model = load_adit(dit.export_path.parent, "cuda" if torch.cuda.is_available() else "cpu")
    export_model_dir(model, args.out / "model", dtype=torch.bfloat16)  # small enough to bring back
    for kind in ("molecule", "crystal"):
        report[f"sampling_{kind}"] = save_samples(model, kind, args.samples, args.out / f"samples_{kind}.pt",
                                                  args.sample_batch, seed=1000, num_steps=args.steps)
        if torch.cuda.is_available():
            report[f"peak_memory_gib_{kind}"] = torch.cuda.max_memory_allocated() / 2**30
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

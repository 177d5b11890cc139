"""Train ADiT through its lineage on a machine with only torch: one prepared command per GPU lease.

GPU machines here lack the chemistry stack (RDKit, pymatgen, pyarrow, MLflow), so a CPU machine
curates the data into tensor packs (`chemgen.models.adit.workflow.training_packs`), and this
module, which imports torch and chemgen's torch-only modules alone:

1. loads the lineage's checkpoint (``--init``; none starts a new lineage),
2. trains the VAE for ``--vae-minutes`` and the DiT on the new VAE for ``--dit-minutes`` with
   `chemgen.generation.trainer.fit` (data resident on the GPU, bf16, fused AdamW, WSD schedule,
   optionally torch.compile),
3. measures how well the VAE reconstructs held-out systems (`diagnostics`),
4. writes the new checkpoint as a lineage (``<out>/lineage``: manifest, weight shards of at most
   16 MiB, the lineage log with this run appended) and samples of each kind as tensors.

Back on the CPU machine, `chemgen.models.adit.lineage_runs` scores the samples and promotes the
checkpoint into ``models/weights/`` only if the gate prefers it.

    python -m chemgen.models.adit.remote --packs packs/ --out $OUT --config gpu-quick \\
        --init models/weights/adit-gpu-quick --vae-minutes 3 --dit-minutes 1.5 --samples 2000
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from chemgen.config import ADiTConfig, load_config
from chemgen.data.tensors import TensorPack
from chemgen.generation import lineage
from chemgen.generation.resident import ResidentBatches
from chemgen.generation.trainer import EMA, FitResult, WSDSchedule, fit
from chemgen.models.adit.diagnostics import (dit_prediction_error, perturbed_reconstructions,
                                             reconstruction_metrics, save_reconstructions)
from chemgen.models.adit.model import ADiT, MAX_ATOMS
from chemgen.models.adit.vae import AllAtomVAE

OVERSAMPLE = {"mp20": 3}  # ADiT's joint training sees MP-20 about 3x as often as its size alone gives


def save_samples(model: ADiT, kind: str, n: int, path: Path, batch_size: int, seed: int, **sampling: Any) -> dict[str, float]:
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


def initial_model(config: ADiTConfig, init: Path | None) -> tuple[ADiT, dict[str, int], list[str]]:
    """A fresh model, or the lineage's checkpoint with its step counts and data versions."""
    if init is None or not lineage.is_lineage(init):
        return ADiT(config), {"vae": 0, "dit": 0}, []
    checkpoint = lineage.load(init)
    model = ADiT(config)  # the config may change loss weights between runs, never the architecture
    try:
        model.vae.load_state_dict(checkpoint.groups["vae"])
        model.dit.load_state_dict(checkpoint.groups["dit"])
    except RuntimeError as err:
        raise ValueError(f"{init}: the lineage's weights do not fit config {config.name!r} ({err})") from None
    return model, {"vae": 0, "dit": 0, **checkpoint.steps}, list(checkpoint.manifest.get("data", []))


def train_vae_stage(vae: AllAtomVAE, data: ResidentBatches, config: ADiTConfig, minutes: float, lr: float,
                    compile: bool, **kwargs: Any) -> FitResult:
    vae.train()
    return fit(lambda batch: vae.loss(batch, train=True), vae.parameters(), data,
               schedule=WSDSchedule(lr, kwargs.pop("warmup_steps", 300), kwargs.pop("decay_fraction", 0.2)),
               minutes=minutes, weight_decay=config.vae_train.weight_decay, grad_clip=config.vae_train.grad_clip,
               compile=compile, **kwargs)


def train_dit_stage(model: ADiT, data: ResidentBatches, config: ADiTConfig, minutes: float, lr: float,
                    compile: bool, **kwargs: Any) -> FitResult:
    model.train()
    model.freeze_vae()  # the VAE stays frozen, in eval mode
    ema = EMA(model.dit, config.dit_train.ema_decay)
    result = fit(model.dit_loss, model.dit.parameters(), data,
                 schedule=WSDSchedule(lr, kwargs.pop("warmup_steps", 300), kwargs.pop("decay_fraction", 0.2)),
                 minutes=minutes, weight_decay=config.dit_train.weight_decay, grad_clip=config.dit_train.grad_clip,
                 ema=ema, compile=compile, **kwargs)
    ema.copy_to(model.dit)
    return result


def validation_batch(val: TensorPack, per_kind: int, device: torch.device) -> Any:
    """Up to ``per_kind`` molecules and ``per_kind`` crystals of the validation pack, fixed by seed 0."""
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
    picked = torch.cat([order[~val.pbc[order]][:per_kind], order[val.pbc[order]][:per_kind]])
    dense = val.dense(picked)
    return type(dense)(**{k: v.to(device) for k, v in vars(dense).items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=Path, required=True, help="folder with train.pt and val.pt tensor packs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="gpu-quick")
    parser.add_argument("--init", type=Path, default=None, help="lineage to continue (absent or empty: a new one)")
    parser.add_argument("--vae-minutes", type=float, default=3.0, help="0 keeps the lineage's VAE")
    parser.add_argument("--dit-minutes", type=float, default=1.5)
    parser.add_argument("--vae-lr", type=float, default=8e-4, help="peak of the WSD schedule (constant across runs)")
    parser.add_argument("--dit-lr", type=float, default=8e-4)
    parser.add_argument("--tokens-per-batch", type=int, default=65_536, help="padded atoms per step")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both stages (a first H100 run spent, by its timings, about 2 minutes compiling per "
                             "stage, which a run of a few minutes does not win back)")
    parser.add_argument("--samples", type=int, default=2000, help="samples of each kind")
    parser.add_argument("--sample-batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="ODE steps (default: config)")
    parser.add_argument("--validation", type=int, default=1000, help="molecules and crystals to reconstruct")
    parser.add_argument("--data", default="", help="comma-separated dataset versions of the packs (name@version)")
    parser.add_argument("--deadline-minutes", type=float, default=None,
                        help="hard limit for the whole run: the training stages shrink (each still ending with its "
                             "decay) so that diagnostics, the lineage and the samples are written in time")
    parser.add_argument("--reserve-minutes", type=float, default=0.75,
                        help="kept free under the deadline for diagnostics, saving and sampling")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(int(time.time()))  # each run of a lineage draws new batches
    config = load_config(args.config)
    run_start = time.perf_counter()
    end_training = (None if args.deadline_minutes is None
                    else run_start + 60 * (args.deadline_minutes - args.reserve_minutes))
    train, val = TensorPack.load(args.packs / "train.pt"), TensorPack.load(args.packs / "val.pt")
    data = ResidentBatches(train, device, tokens_per_batch=args.tokens_per_batch, oversample=OVERSAMPLE)
    model, steps, _ = initial_model(config, args.init)
    model.to(device)
    report: dict[str, Any] = {
        "config": config.name, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "train_systems": len(train), "init": str(args.init) if args.init else None,
        "steps_before": dict(steps), "mean_batch_systems": round(data.mean_batch_size, 1),
        "buckets": [{"atoms": b.size, "systems": len(b.batch.mask), "batch": b.batch_size} for b in data.buckets]}
    print(json.dumps(report, indent=1), flush=True)
    common = {"compile": args.compile, "log": lambda line: print(line, flush=True)}

    if args.vae_minutes > 0:
        # the VAE may use the time to the deadline less the DiT's share
        stop = None if end_training is None else end_training - 60 * args.dit_minutes
        result = train_vae_stage(model.vae, data, config, args.vae_minutes, args.vae_lr, stop_at=stop, **common)
        steps["vae"] += result.steps
        report["vae"] = result.as_dict()
        print("vae", json.dumps(report["vae"]), flush=True)
    model.eval()
    val_batch = validation_batch(val, args.validation, device)
    report["reconstruction"], decoded = reconstruction_metrics(model, val_batch)
    save_reconstructions(args.out / "reconstructions.pt", val_batch, decoded, perturbed_reconstructions(model, val_batch))
    print("reconstruction", json.dumps(report["reconstruction"]), flush=True)

    if args.vae_minutes > 0 or float(model.dit.latent_scale) == 1.0:  # a new VAE, or a scale never fitted
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4096]
        dense = train.dense(pick)
        report["latent_scale"] = model.fit_latent_scale(type(dense)(**{k: v.to(device) for k, v in vars(dense).items()}))
        print(f"latent scale {report['latent_scale']:.4f}", flush=True)
    if args.dit_minutes > 0:
        result = train_dit_stage(model, data, config, args.dit_minutes, args.dit_lr, stop_at=end_training, **common)
        steps["dit"] += result.steps
        report["dit"] = result.as_dict()
        print("dit", json.dumps(report["dit"]), flush=True)
    model.eval()
    report["dit_error"] = dit_prediction_error(model, val_batch)
    print("dit error", json.dumps(report["dit_error"]), flush=True)
    histogram = torch.stack([train.num_atoms_histogram(i, MAX_ATOMS) for i in range(config.dit.num_datasets + 1)])
    model.num_atoms_histogram.copy_(histogram.float())
    model.eval()

    folder = args.out / "lineage"
    if args.init is not None and (args.init / "lineage.jsonl").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.init / "lineage.jsonl", folder / "lineage.jsonl")
    data_versions = [d for d in args.data.split(",") if d]
    manifest = lineage.save(folder, {"vae": model.vae.state_dict(), "dit": model.dit.state_dict(),
                                     "num_atoms_histogram": {"counts": model.num_atoms_histogram}},
                            {"model": "adit", "config": config.to_dict(), "steps": steps, "scores": {},
                             "data": data_versions})
    report["lineage"] = {"content_hash": manifest["content_hash"], "parameters": manifest["parameters"],
                         "shards": [e["bytes"] for e in manifest["shards"]]}

    for kind in ("molecule", "crystal"):
        report[f"sampling_{kind}"] = save_samples(model, kind, args.samples, args.out / f"samples_{kind}.pt",
                                                  args.sample_batch, seed=1000, num_steps=args.steps)
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["wall_minutes"] = (time.perf_counter() - run_start) / 60
    lineage.append_run(folder, {"machine": report["device"], "config": config.name, "steps": steps,
                                "wall_minutes": round(report["wall_minutes"], 2), "data": data_versions,
                                "vae": report.get("vae"), "dit": report.get("dit"),
                                "reconstruction": report["reconstruction"], "dit_error": report["dit_error"],
                                "content_hash": manifest["content_hash"]})
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("steps_before", "wall_minutes", "lineage")}, indent=1))


if __name__ == "__main__":
    main()

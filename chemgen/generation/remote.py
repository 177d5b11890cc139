"""Train any chemgen model through its lineage on a machine with only torch: one prepared command per GPU lease.

GPU machines here lack the chemistry stack (RDKit, pymatgen, pyarrow, MLflow), so a CPU machine
curates the data into tensor packs (``chemgen train adit-packs``), and this module, which imports
torch and chemgen's torch-only modules alone:

1. loads the lineage's checkpoint (``--init``; none starts a new lineage),
2. trains the model's stages in order (``--minutes vae=2.5,dit=4``; 0 skips a stage) with
   `chemgen.generation.trainer.fit` (data resident on the GPU, bf16, fused AdamW, WSD schedule,
   optionally torch.compile), each followed by the model's diagnostics on held-out systems,
3. writes the new checkpoint as a lineage (``<out>/lineage``: manifest, weight shards of at most
   16 MiB, the lineage log with this run appended) and samples of each kind as tensors.

``--deadline-minutes`` bounds the whole run: stages shrink, each still ending with its decay, so
that the lineage and the samples are written before the lease's limit. Back on the CPU machine,
``chemgen train adit-import <out>`` scores the samples and promotes the checkpoint into
``models/weights/`` only if the gate prefers it.

    python -m chemgen.generation.remote --model adit --config gpu-quick --packs packs/ --out $OUT \\
        --init models/weights/adit-gpu-quick --minutes vae=2.5,dit=4 --deadline-minutes 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from chemgen.data.tensors import TensorPack
from chemgen.generation import lineage
from chemgen.generation.protocol import generator_class
from chemgen.generation.resident import ResidentBatches
from chemgen.generation.trainer import EMA, WSDSchedule, fit

OVERSAMPLE = {"mp20": 3}  # ADiT's joint training sees MP-20 about 3x as often as its size alone gives
DEFAULT_LR = 8e-4         # the WSD peak: the same in every run of a lineage


def save_samples(model: Any, kind: str, n: int, path: Path, batch_size: int, seed: int, **sampling: Any) -> dict[str, float]:
    """Generate n samples in batches (seed + i for batch i); save padded tensors; return throughput."""
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
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": 1, "kind": kind, **merged}, tmp)
    tmp.replace(path)
    return {"samples": n, "seconds": seconds, "samples_per_second": n / seconds}


def per_stage(text: str, stages: tuple[str, ...], default: float | None, what: str) -> dict[str, float]:
    """``"vae=2.5,dit=4"`` -> {"vae": 2.5, "dit": 4.0}; stages not named get ``default``."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in stages or not value:
            raise SystemExit(f"--{what}: {item!r} is not STAGE=NUMBER with STAGE in {', '.join(stages)}")
        values[name] = float(value)
    missing = [s for s in stages if s not in values]
    if missing and default is None:
        raise SystemExit(f"--{what}: give every stage ({', '.join(stages)}), missing {', '.join(missing)}")
    return {s: values.get(s, default) for s in stages}


def initial_model(model_name: str, config: Any, init: Path | None) -> tuple[Any, dict[str, int]]:
    """A fresh model, or the lineage's checkpoint with its step counts."""
    model = generator_class(model_name)(config)
    steps = {s: 0 for s in model.stage_names}
    if init is None or not lineage.is_lineage(init):
        return model, steps
    checkpoint = lineage.load(init)
    try:  # the config may change loss weights between runs, never the architecture
        model.load_checkpoint_groups(checkpoint.groups)
    except RuntimeError as err:
        raise SystemExit(f"{init}: the lineage's weights do not fit config {config.name!r} ({err})") from None
    return model, {**steps, **checkpoint.steps}


def train_stage(model: Any, name: str, train: TensorPack, data: ResidentBatches, minutes: float, lr: float,
                compile: bool, stop_at: float | None) -> tuple[dict[str, Any], int]:
    stage = model.training_stage(name, train)
    ema = EMA(stage.ema_module, stage.ema_decay) if stage.ema_module is not None else None
    result = fit(stage.loss, stage.parameters, data, schedule=WSDSchedule(lr, 300, 0.2), minutes=minutes,
                 weight_decay=stage.weight_decay, grad_clip=stage.grad_clip, ema=ema, compile=compile,
                 log=lambda line: print(line, flush=True), stop_at=stop_at)
    if ema is not None:
        ema.copy_to(stage.ema_module)
    return {**stage.info, **result.as_dict()}, result.steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="adit")
    parser.add_argument("--config", default="gpu-quick")
    parser.add_argument("--packs", type=Path, required=True, help="folder with train.pt and val.pt tensor packs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="lineage to continue (absent or empty: a new one)")
    parser.add_argument("--minutes", required=True, help="training minutes per stage, e.g. vae=2.5,dit=4 (0 skips)")
    parser.add_argument("--lr", default="", help=f"WSD peak per stage, e.g. vae=8e-4 (default {DEFAULT_LR})")
    parser.add_argument("--tokens-per-batch", type=int, default=65_536, help="padded atoms per step")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each stage (a first H100 run spent, by its timings, about 2 minutes "
                             "compiling per stage, which a run of a few minutes does not win back)")
    parser.add_argument("--deadline-minutes", type=float, default=None, help="hard limit for the whole run")
    parser.add_argument("--reserve-minutes", type=float, default=0.75,
                        help="kept free under the deadline for diagnostics, saving and sampling")
    parser.add_argument("--samples", type=int, default=2000, help="samples of each kind")
    parser.add_argument("--sample-batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="ODE steps (default: config)")
    parser.add_argument("--data", default="", help="comma-separated dataset versions of the packs (name@version)")
    args = parser.parse_args(argv)

    from chemgen.config import load_config

    run_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")
    torch.manual_seed(int(time.time()))  # each run of a lineage draws new batches
    config = load_config(args.config)
    model, steps = initial_model(args.model, config, args.init)
    minutes = per_stage(args.minutes, model.stage_names, None, "minutes")
    rates = per_stage(args.lr, model.stage_names, DEFAULT_LR, "lr")
    end_training = (None if args.deadline_minutes is None
                    else run_start + 60 * (args.deadline_minutes - args.reserve_minutes))
    train, val = TensorPack.load(args.packs / "train.pt"), TensorPack.load(args.packs / "val.pt")
    data = ResidentBatches(train, device, tokens_per_batch=args.tokens_per_batch, oversample=OVERSAMPLE)
    model.to(device)
    report: dict[str, Any] = {
        "model": args.model, "config": config.name, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "train_systems": len(train), "init": str(args.init) if args.init else None, "steps_before": dict(steps),
        "mean_batch_systems": round(data.mean_batch_size, 1),
        "buckets": [{"atoms": b.size, "systems": len(b.batch.mask), "batch": b.batch_size} for b in data.buckets]}
    print(json.dumps(report), flush=True)

    for i, name in enumerate(model.stage_names):
        if minutes[name] > 0:
            later = sum(minutes[s] for s in model.stage_names[i + 1:])  # time the later stages keep
            stop = None if end_training is None else end_training - 60 * later
            report[name], new_steps = train_stage(model, name, train, data, minutes[name], rates[name],
                                                  args.compile, stop)
            steps[name] += new_steps
            print(name, json.dumps(report[name]), flush=True)
        report[f"{name}_diagnostics"] = model.stage_diagnostics(name, val, args.out)
        print(f"{name} diagnostics", json.dumps(report[f"{name}_diagnostics"]), flush=True)

    model.eval()
    folder = args.out / "lineage"
    if args.init is not None and (args.init / "lineage.jsonl").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.init / "lineage.jsonl", folder / "lineage.jsonl")
    data_versions = [d for d in args.data.split(",") if d]
    manifest = lineage.save(folder, model.checkpoint_groups(),
                            {"model": args.model, "config": config.to_dict(), "steps": steps, "scores": {},
                             "data": data_versions})
    report["lineage"] = {"content_hash": manifest["content_hash"], "parameters": manifest["parameters"],
                         "shards": [e["bytes"] for e in manifest["shards"]]}
    for kind in ("molecule", "crystal"):
        report[f"sampling_{kind}"] = save_samples(model, kind, args.samples, args.out / f"samples_{kind}.pt",
                                                  args.sample_batch, seed=1000, num_steps=args.steps)
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["wall_minutes"] = (time.perf_counter() - run_start) / 60
    lineage.append_run(folder, {"machine": report["device"], "model": args.model, "config": config.name,
                                "steps": steps, "wall_minutes": round(report["wall_minutes"], 2),
                                "data": data_versions, "content_hash": manifest["content_hash"],
                                **{k: report[k] for k in report if k in model.stage_names or k.endswith("_diagnostics")}})
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("steps_before", "wall_minutes", "lineage")}), flush=True)


if __name__ == "__main__":
    main()

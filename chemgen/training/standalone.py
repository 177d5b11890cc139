"""Train any chemgen model through its lineage on a machine with only torch: one command, packs in, lineage out.

GPU machines here lack the chemistry stack (RDKit, pymatgen, pyarrow, MLflow, Prefect), so a CPU machine
curates the data into tensor packs (``chemgen train packs``), and this module, which imports
torch, Lightning and chemgen's torch-only modules alone:

1. loads the lineage's checkpoint (``--init``; none starts a new lineage),
2. trains the model's stages in order (``--minutes vae=2.5,dit=4``; 0 skips a stage) through
   `chemgen.training.stages.train_stages` (data resident on the GPU, bf16, fused AdamW, WSD
   schedule, optionally torch.compile), each followed by the model's diagnostics on held-out systems,
3. writes the new checkpoint as a lineage (``<out>/lineage``: manifest, weight shards of at most
   16 MiB, the lineage log with this run appended) and samples of each dataset as tensors.

On several GPUs or machines, the launcher starts one process per GPU and Lightning's DDP trains them together on
shards of the data (`chemgen.training.distributed`); rank 0 alone writes::

    torchrun --nproc-per-node 8 -m chemgen.training.standalone --model adit ... --out /shared/run
    srun --nodes 2 --ntasks-per-node 8 --gpus-per-node 8 python -m chemgen.training.standalone ... --out /shared/run

``--deadline-minutes`` bounds the whole run: stages shrink, each still ending with its decay, so
that the lineage and the samples are written before the machine's time is up. Back on a machine with the full stack,
``chemgen train import <out>`` scores the samples and promotes the checkpoint into
``models/weights/`` only if the gate prefers it.

    python -m chemgen.training.standalone --model adit --config gpu-quick --packs packs/ --out $OUT \\
        --init models/weights/adit-gpu-quick --minutes vae=2.5,dit=4 --deadline-minutes 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from chemgen.data.tensors import TensorPack
from chemgen.models.specs import generator_class, model_spec
from chemgen.training.distributed import world as launched_world
from chemgen.training.stages import finish_run, run_config, stage_values, train_stages
from chemgen.samples import save_samples


def per_stage(text: str, stages: tuple[str, ...], what: str, every_stage: bool) -> dict[str, float]:
    """``"vae=2.5,dit=4"`` -> {"vae": 2.5, "dit": 4.0}; ``every_stage``: each stage must be named."""
    try:
        values = stage_values(text, stages, what)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    missing = [s for s in stages if s not in values]
    if missing and every_stage:
        raise SystemExit(f"--{what}: give every stage ({', '.join(stages)}), missing {', '.join(missing)}")
    return values


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="adit")
    parser.add_argument("--config", default="gpu-quick")
    parser.add_argument("--packs", type=Path, required=True, help="folder with train.pt and val.pt tensor packs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=None, help="lineage to continue (absent or empty: a new one)")
    parser.add_argument("--minutes", default="", help="training minutes per stage, e.g. vae=2.5,dit=4 (0 skips; "
                                                      "default: the config's max_minutes / max_steps)")
    parser.add_argument("--lr", default="", help="WSD peak per stage, e.g. vae=8e-4 (default: the config's lr)")
    parser.add_argument("--tokens-per-batch", type=int, default=None,
                        help="padded atoms per step (default: the config's cuda_tokens_per_batch on a GPU, "
                             "tokens_per_batch on a CPU)")
    parser.add_argument("--compile", nargs="?", const="all", default="",
                        help="torch.compile the stages named (e.g. dit), or every stage without a value (measured on "
                             "an H100: 217 s of compilation for 1.45x the VAE's eager throughput, which a stage of a "
                             "few minutes does not win back)")
    parser.add_argument("--deadline-minutes", type=float, default=None, help="hard limit for the whole run")
    parser.add_argument("--reserve-minutes", type=float, default=0.75,
                        help="kept free under the deadline for diagnostics, saving and sampling")
    parser.add_argument("--samples", type=int, default=2000, help="samples of each dataset")
    parser.add_argument("--sample-batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps of the scored samples: ODE steps (ADiT), ancestral steps (GFMDiff); "
                             "default: the config's. Recorded in the evaluation context.")
    parser.add_argument("--data", default="", help="comma-separated dataset versions of the packs (name@version)")
    parser.add_argument("--progress", action="store_true", help="Lightning's progress bar (interactive runs)")
    parser.add_argument("--benchmark", type=Path, default=None,
                        help="DiffSpectra: a query pack (python -m chemgen.elucidation.benchmark queries); the trained "
                             "model samples candidates for it into <out>/candidates.pt, scored back on the CPU")
    parser.add_argument("--benchmark-samples", type=int, default=10, help="candidates per query and setting")
    parser.add_argument("--benchmark-steps", type=int, default=None, help="ancestral steps (default: the config's)")
    parser.add_argument("--benchmark-chunk", type=int, default=None,
                        help="samples denoised together (default: 4,096 on a GPU, 128 on a CPU)")
    args = parser.parse_args(argv)

    from chemgen.models.specs import load_config

    run_start = time.perf_counter()
    world = launched_world()
    spec = model_spec(args.model)
    stages = tuple(generator_class(args.model).stage_names)
    minutes = per_stage(args.minutes, stages, "minutes", every_stage=True) if args.minutes else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the command's settings go into the config, which the lineage keeps: it records what the run used
    config = run_config(load_config(args.config, args.model), stages, minutes=minutes,
                        lr=per_stage(args.lr, stages, "lr", every_stage=False),
                        tokens_per_batch=args.tokens_per_batch, device_type=device)
    compiled = set(stages) if args.compile == "all" else {s for s in args.compile.split(",") if s}
    if compiled - set(stages):
        raise SystemExit(f"--compile: {', '.join(sorted(compiled - set(stages)))} is not a stage of {args.model}")
    stop_at = None if args.deadline_minutes is None else run_start + 60 * (args.deadline_minutes - args.reserve_minutes)
    train, val = TensorPack.load(args.packs / "train.pt"), TensorPack.load(args.packs / "val.pt")
    args.out.mkdir(parents=True, exist_ok=True)
    data_versions = [d for d in args.data.split(",") if d]
    if world.is_zero:
        print(json.dumps({"model": args.model, "config": config.name, "train_systems": len(train),
                          "processes": world.size}), flush=True)
    model, report = train_stages(args.model, config, train, val, args.out, init=args.init, device=device,
                                 compile=compiled, stop_at=stop_at, world=world,
                                 data_versions=data_versions, log=lambda line: print(line, flush=True),
                                 progress_bar=args.progress and world.is_zero)
    if not world.is_zero:   # rank 0 samples and writes the lineage's log and the report
        return args.out
    for dataset in spec.sample_datasets:
        report[f"sampling_{dataset}"] = save_samples(model, dataset, args.samples, args.out / f"samples_{dataset}.pt",
                                                     args.sample_batch, seed=1000, num_steps=args.steps)
    if args.benchmark is not None:
        from chemgen.models.diffspectra.candidates import sample_candidates, save_candidates

        start = time.perf_counter()
        candidates = sample_candidates(model, TensorPack.load(args.benchmark), num_samples=args.benchmark_samples,
                                       num_steps=args.benchmark_steps, seed=0, log=lambda line: print(line, flush=True),
                                       chunk_size=args.benchmark_chunk or (4096 if torch.cuda.is_available() else 128))
        save_candidates(args.out / "candidates.pt", candidates)
        report["benchmark_seconds"] = time.perf_counter() - start
    if torch.cuda.is_available():
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["wall_minutes"] = (time.perf_counter() - run_start) / 60
    manifest = finish_run(args.out / "lineage", report, report["wall_minutes"])
    report["lineage"] = {"content_hash": manifest["content_hash"], "parameters": manifest["parameters"],
                         "shards": [e["bytes"] for e in manifest["shards"]]}
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("steps_before", "wall_minutes", "lineage")}), flush=True)
    return args.out


if __name__ == "__main__":
    main()

"""Training any chemgen model through its lineage: its stages in order, each resumable, then samples.

`train_stages` is what every training entry point calls: `chemgen train MODEL`, the nightly flow's
train task and the GPU runner (`chemgen.training.standalone`). It imports torch, Lightning and chemgen's
torch-only modules alone, so it runs on a GPU machine without the chemistry stack.

A run folder holds the run's checkpoint as a lineage (``<out>/lineage``: the lineage continued, with
this run appended to its log once the run is done) and, while a stage trains, that stage's Lightning
checkpoint (``<out>/checkpoints/<stage>/last.ckpt``). Each stage ends by saving the lineage with the
stage listed as completed, so a rerun into the same folder skips finished stages and resumes the
interrupted one exactly where its last checkpoint left it.

Under a launcher (``torchrun``, ``srun``: `chemgen.training.distributed`) every rank runs `train_stages` on its
own device and shard of the data, and only rank 0 writes: the lineage, its log and the Lightning checkpoints. The
run folder must then be on a file system every rank sees (a rerun resumes from it on every rank).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from chemgen import lineage
from chemgen.data.tensors import TensorPack
from chemgen.errors import UsageError
from chemgen.lineage import LineageError
from chemgen.models.specs import generator_class
from chemgen.training.distributed import World, world as launched_world
from chemgen.training.loop import EMA, WSDSchedule, fit
from chemgen.training.resident import ResidentBatches

OVERSAMPLE = {"mp20": 3}  # ADiT's joint training sees MP-20 about 3x as often as its size alone gives
MONITOR_SYSTEMS = 128     # held-out systems of each kind the in-stage monitor measures


def stage_values(text: str | None, stages: tuple[str, ...], what: str, cast: type = float) -> dict[str, Any]:
    """``"vae=2.5,dit=4"`` -> {"vae": 2.5, "dit": 4.0}, for the stages named (a bad item raises ValueError)."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        if name not in stages or not value:
            raise UsageError(f"--{what}: {item!r} is not STAGE=NUMBER; the stages are {', '.join(stages)}")
        try:
            values[name] = cast(value)
        except ValueError:
            raise UsageError(f"--{what}: {item!r}: {value!r} is not a number") from None
    return values


def run_config(config: Any, stages: tuple[str, ...], *, minutes: Mapping[str, float] | None = None,
               steps: Mapping[str, int] | None = None, lr: Mapping[str, float] | None = None,
               tokens_per_batch: int | None = None, device_type: str = "cpu") -> Any:
    """The config a run trains with: ``config`` with the caller's settings in place of its own, so that what a run
    logs and saves is what it used.

    ``minutes`` and ``steps`` (per stage) replace the budgets of every stage when either names one: a stage they do
    not name is not trained. Without them the config's ``max_minutes`` / ``max_steps`` apply. ``lr`` replaces a
    stage's peak learning rate; ``tokens_per_batch`` the batch of every stage on this ``device_type``.
    """
    minutes, steps, lr = dict(minutes or {}), dict(steps or {}), dict(lr or {})
    unknown = (set(minutes) | set(steps) | set(lr)) - set(stages)
    if unknown:
        raise UsageError(f"{config.name} has stages {', '.join(stages)}, not {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    for name in stages:
        section = config.stage_config(name)
        edits: dict[str, Any] = {}
        if minutes or steps:
            edits.update(max_minutes=minutes.get(name), max_steps=steps.get(name))
        if name in lr:
            edits["lr"] = lr[name]
        if tokens_per_batch is not None:
            edits["cuda_tokens_per_batch" if device_type == "cuda" else "tokens_per_batch"] = tokens_per_batch
        if edits:
            changes[f"{name}_train"] = dataclasses.replace(section, **edits)
    return dataclasses.replace(config, **changes) if changes else config


def initial_model(model_name: str, config: Any, init: Path | None) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """A fresh model, or the lineage's checkpoint; with its step counts and its manifest ({} when fresh)."""
    model = generator_class(model_name)(config)
    steps = {s: 0 for s in model.stage_names}
    if init is None or not lineage.is_lineage(init):
        return model, steps, {}
    checkpoint = lineage.load(init)
    if checkpoint.manifest.get("model", model_name) != model_name:
        raise LineageError(f"{init}: a lineage of {checkpoint.manifest.get('model')!r}, not of {model_name!r}")
    try:  # the config may change loss weights between runs, never the architecture
        model.load_checkpoint_groups(checkpoint.groups)
    except RuntimeError as err:
        raise LineageError(f"{init}: the lineage's weights do not fit config {config.name!r} ({err})") from None
    return model, {**steps, **checkpoint.steps}, checkpoint.manifest


def train_stages(model_name: str, config: Any, train: TensorPack, val: TensorPack, out: str | Path, *,
                 init: str | Path | None = None, minutes: Mapping[str, float] | None = None,
                 steps: Mapping[str, int] | None = None, lr: Mapping[str, float] | None = None,
                 tokens_per_batch: int | None = None, compile: bool | set[str] = False, stop_at: float | None = None,
                 device: str | torch.device | None = None, data_versions: list[str] | None = None,
                 log: Callable[[str], None] = print, progress_bar: bool = False,
                 logger: Any = None, world: World | None = None) -> tuple[Any, dict[str, Any]]:
    """Train every stage of the model as its `TrainConfig` says (``minutes``, ``steps``, ``lr`` and
    ``tokens_per_batch`` go into the config first, `run_config`): budget (``max_minutes`` and/or ``max_steps``;
    a stage with neither skips its training, not its diagnostics), batch, learning rate and schedule, EMA, seed. Continues ``init`` or, if
    ``out`` holds an interrupted run, that run. ``stop_at`` (a ``time.perf_counter()`` instant) is the end of
    training, stages shrinking so that each ends decayed. ``compile`` is True, False or the names of the stages
    to ``torch.compile``.

    ``world`` (default: what the launcher set, one process without one) trains data-parallel over its ranks;
    ``device`` then names the kind (cuda, cpu) and each rank takes its own.

    Returns the trained model (eval mode, on ``device``) and the run's report; ``<out>/lineage`` holds it (written
    by rank 0 alone).
    """
    out = Path(out)
    folder = out / "lineage"
    world = world or launched_world()
    device = world.device(device) if world.distributed else torch.device(
        device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resumed = lineage.is_lineage(folder)
    stage_names = tuple(generator_class(model_name).stage_names)
    config = run_config(config, stage_names, minutes=minutes, steps=steps, lr=lr, tokens_per_batch=tokens_per_batch,
                        device_type=device.type)
    torch.manual_seed(config.stage_config(stage_names[0]).seed)   # a fresh model's initial weights
    model, done_steps, manifest = initial_model(model_name, config, folder if resumed else
                                                (Path(init) if init is not None else None))
    completed = list(manifest.get("completed_stages", [])) if resumed else []
    if world.is_zero and not resumed and init is not None and (Path(init) / "lineage.jsonl").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(init) / "lineage.jsonl", folder / "lineage.jsonl")  # the run log carries on
    resident: dict[int, ResidentBatches] = {}   # tokens per batch -> the pack's buckets on the device
    monitor_batch = val.held_out(MONITOR_SYSTEMS).to(device) if len(val) else None
    model.to(device)
    report: dict[str, Any] = dict(manifest.get("run_report", {})) if resumed else {}  # finished stages' results
    report |= {
        "model": model_name, "config": config.name, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_systems": len(train), "init": str(init) if init else None, "steps_before": dict(done_steps),
        "resumed_after": list(completed), "processes": world.size}
    for i, name in enumerate(model.stage_names):
        if name in completed:
            continue
        cfg = config.stage_config(name)
        if (cfg.max_minutes or 0) > 0 or (cfg.max_steps or 0) > 0:
            # time the later stages keep
            later = sum(config.stage_config(s).max_minutes or 0 for s in model.stage_names[i + 1:])
            stage_stop = None if stop_at is None else stop_at - 60 * later
            # a continued lineage draws other batches than its earlier runs, and the same ones on a rerun
            seed = cfg.seed + done_steps[name]
            torch.manual_seed(seed)
            tokens = cfg.tokens_for(device.type)
            if tokens not in resident:
                resident[tokens] = ResidentBatches(train, device, tokens_per_batch=tokens, oversample=OVERSAMPLE,
                                                   world=world)
            data = resident[tokens]
            data.reseed(seed)
            stage = model.training_stage(name, train, tuple(s for s in completed if s in model.stage_names))
            ema = EMA(stage.ema_module, stage.ema_decay) if stage.ema_module is not None else None
            monitor = None if monitor_batch is None else (lambda n=name: model.stage_monitor(n, monitor_batch))
            result = fit(stage.loss, stage.parameters, data,
                         schedule=WSDSchedule(cfg.lr, cfg.warmup_steps, cfg.decay_fraction),
                         minutes=cfg.max_minutes or None, max_steps=cfg.max_steps or None,
                         weight_decay=stage.weight_decay, grad_clip=stage.grad_clip, ema=ema,
                         compile=compile if isinstance(compile, bool) else name in compile,
                         log=log, stop_at=stage_stop, model=model, checkpoint_dir=out / "checkpoints" / name,
                         checkpoint_minutes=cfg.checkpoint_minutes, progress_bar=progress_bar, logger=logger,
                         diagnose=monitor, diagnose_every=cfg.val_every_steps, metric_prefix=f"{name}/", world=world)
            if ema is not None:
                ema.copy_to(stage.ema_module)
            done_steps[name] += result.steps
            report[name] = {**stage.info, **result.as_dict(), "seed": seed, "tokens_per_batch": tokens,
                            "mean_batch_systems": round(data.mean_batch_size, 1),
                            "buckets": [{"atoms": b.size, "systems": len(b.batch.mask), "batch": b.batch_size}
                                        for b in data.buckets]}
            log(f"{name} {report[name]}")
        model.eval()
        if world.is_zero:   # the other ranks hold the same weights: they wait for rank 0 in the next stage
            report[f"{name}_diagnostics"] = model.stage_diagnostics(name, val, out)
            log(f"{name} diagnostics {report[f'{name}_diagnostics']}")
        completed.append(name)
        if world.is_zero:
            _save(model, model_name, config, folder, done_steps, data_versions, completed, report)
            shutil.rmtree(out / "checkpoints" / name, ignore_errors=True)   # the lineage holds the stage now
    model.eval()
    return model, report


def _save(model: Any, model_name: str, config: Any, folder: Path, steps: dict[str, int], data: list[str] | None,
          completed: list[str], report: dict[str, Any]) -> dict[str, Any]:
    plain = {k: ({s: v for s, v in value.items() if s != "buckets"} if isinstance(value, dict) else value)
             for k, value in report.items()}
    return lineage.save(folder, model.checkpoint_groups(),
                        {"model": model_name, "config": config.to_dict(), "steps": dict(steps), "scores": {},
                         "data": list(data or []), "completed_stages": list(completed), "run_report": plain})


def finish_run(folder: str | Path, report: dict[str, Any], wall_minutes: float) -> dict[str, Any]:
    """Append the finished run to the lineage log (one line: machine, steps, throughput, diagnostics)."""
    manifest = lineage.read_manifest(folder)
    stages = tuple(manifest.get("completed_stages", []))
    lineage.append_run(folder, {"machine": report.get("device"), "model": manifest.get("model"),
                                "config": manifest["config"]["name"], "steps": manifest.get("steps", {}),
                                "wall_minutes": round(wall_minutes, 2), "data": manifest.get("data", []),
                                "content_hash": manifest["content_hash"],
                                **{k: v for k, v in report.items() if k in stages or k.endswith("_diagnostics")}})
    return manifest



"""Training ADiT: data loaders over tensor packs, a Lightning trainer, checkpoints and exports.

The same code runs on CPU (fp32), on one CUDA GPU (bf16 mixed precision) and on several
GPUs with DDP. Lightning checkpoints (``<out>/<stage>/checkpoints/last.ckpt``) make an
interrupted run resume where it stopped. Each stage ends by exporting plain weights
(``vae.pt``, ``adit.pt``: config + state dict, loadable with ``weights_only=True``).
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader, Dataset

from chemgen.config import ADiTConfig, TrainConfig, from_dict
from chemgen.data.tensors import TensorPack
from chemgen.generation import lineage
from chemgen.models.adit.modules import DiTModule, VAEModule
from chemgen.models.adit.model import ADiT

EXPORT_FORMAT = 1


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loaders(train: TensorPack, val: TensorPack | None, cfg: TrainConfig, max_val: int = 1024) -> tuple[DataLoader, DataLoader | None]:
    """Shuffled training batches and a fixed validation slice, collated straight into padded tensors."""
    train_loader = DataLoader(_Indices(len(train)), batch_size=cfg.batch_size, shuffle=True, drop_last=len(train) > cfg.batch_size,
                              collate_fn=train.dense, num_workers=cfg.num_workers)
    if val is None or len(val) == 0:
        return train_loader, None
    val = val.subset(torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:max_val])
    return train_loader, DataLoader(_Indices(len(val)), batch_size=cfg.batch_size, collate_fn=val.dense,
                                    num_workers=cfg.num_workers)


def default_precision(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def make_trainer(out_dir: Path, cfg: TrainConfig, accelerator: str = "auto", devices: int | str = 1,
                 logger: Any = None, progress: bool = True, max_steps: int | None = None,
                 max_minutes: float | None = None) -> L.Trainer:
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=cfg.checkpoint_every_steps)
    callbacks: list[Any] = [checkpoint]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(50, cfg.val_every_steps // 10))))
    use_ddp = isinstance(devices, int) and devices > 1
    return L.Trainer(
        default_root_dir=out_dir, max_steps=max_steps or cfg.max_steps, max_epochs=-1,
        max_time={"minutes": max_minutes} if max_minutes else None,
        val_check_interval=cfg.val_every_steps, check_val_every_n_epoch=None,
        gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm="norm",
        accelerator=accelerator, devices=devices, strategy="ddp" if use_ddp else "auto",
        precision=default_precision(accelerator), logger=logger if logger is not None else False,
        callbacks=callbacks, enable_progress_bar=progress, num_sanity_val_steps=0,
        log_every_n_steps=min(50, cfg.val_every_steps), enable_model_summary=progress,
    )


def _resume_path(out_dir: Path, resume: bool) -> str | None:
    last = out_dir / "checkpoints" / "last.ckpt"
    return str(last) if resume and last.is_file() else None


@dataclass(frozen=True)
class StageResult:
    export_path: Path
    steps: int
    seconds: float
    systems_per_second: float
    metrics: dict[str, float]


def _fit(module: L.LightningModule, trainer: L.Trainer, train_loader: DataLoader, val_loader: DataLoader | None,
         out_dir: Path, resume: bool) -> tuple[float, int]:
    start_step = 0
    ckpt = _resume_path(out_dir, resume)
    if ckpt:
        start_step = int(torch.load(ckpt, map_location="cpu", weights_only=True).get("global_step", 0))
    start = time.perf_counter()
    kwargs = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt, **kwargs)
    return time.perf_counter() - start, trainer.global_step - start_step


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def train_vae(config: ADiTConfig, train: TensorPack, val: TensorPack | None, out_dir: str | os.PathLike,
              accelerator: str = "auto", devices: int | str = 1, logger: Any = None, resume: bool = True,
              progress: bool = True, max_steps: int | None = None, max_minutes: float | None = None,
              init_from: str | os.PathLike | None = None) -> StageResult:
    """Stage 1. Exports ``<out_dir>/vae.pt``. ``init_from`` (a model directory, ``vae.pt`` or a lineage)
    warm-starts the VAE from its weights."""
    out_dir = Path(out_dir)
    L.seed_everything(config.vae_train.seed, workers=True)
    module = VAEModule(config.to_dict())
    if init_from is not None:
        module.vae.load_state_dict(stage_state(init_from, "vae"))
    trainer = make_trainer(out_dir, config.vae_train, accelerator, devices, logger, progress, max_steps, max_minutes)
    train_loader, val_loader = loaders(train, val, config.vae_train)
    seconds, steps = _fit(module, trainer, train_loader, val_loader, out_dir, resume)
    path = out_dir / "vae.pt"
    if trainer.is_global_zero:  # under DDP one process writes the export
        export(path, config, {"vae": module.vae.state_dict()})
    return StageResult(path, trainer.global_step, seconds, steps * config.vae_train.batch_size / max(seconds, 1e-9),
                       _metrics(trainer))


def train_dit(config: ADiTConfig, vae_path: str | os.PathLike, train: TensorPack, val: TensorPack | None,
              out_dir: str | os.PathLike, accelerator: str = "auto", devices: int | str = 1, logger: Any = None,
              resume: bool = True, progress: bool = True, max_steps: int | None = None,
              max_minutes: float | None = None, init_from: str | os.PathLike | None = None) -> StageResult:
    """Stage 2 on the frozen VAE from ``vae_path``.

    Exports ``<out_dir>/dit.pt`` (EMA weights and the number-of-atoms histogram) beside a copy
    of ``vae.pt``: the folder is the trained model that `load_adit` reads. ``init_from`` (a model
    directory or a lineage) warm-starts the DiT from its EMA weights.
    """
    out_dir = Path(out_dir)
    L.seed_everything(config.dit_train.seed, workers=True)
    vae_state = stage_state(vae_path, "vae")
    module = DiTModule(config.to_dict(), vae_state)
    module.model.set_histograms(train)
    if init_from is not None:  # warm start: continue from the DiT (EMA) weights of an exported model or lineage
        init = stage_state(init_from, "dit")
        module.model.dit.load_state_dict(init)
        module.ema.module.load_state_dict(init)
    if init_from is None or float(module.model.dit.latent_scale) == 1.0:  # latents to unit variance
        module.model.fit_latent_scale(train)
        module.ema.module.latent_scale.copy_(module.model.dit.latent_scale)
    trainer = make_trainer(out_dir, config.dit_train, accelerator, devices, logger, progress, max_steps, max_minutes)
    train_loader, val_loader = loaders(train, val, config.dit_train)
    seconds, steps = _fit(module, trainer, train_loader, val_loader, out_dir, resume)
    path = out_dir / "dit.pt"
    if trainer.is_global_zero:  # under DDP one process writes the export
        ema = module.ema_model()
        export(path, config, {k: v for k, v in ema.checkpoint_groups().items() if k != "vae"})
        export(out_dir / "vae.pt", config, {"vae": vae_state})  # out_dir is now a complete model directory
    return StageResult(path, trainer.global_step, seconds, steps * config.dit_train.batch_size / max(seconds, 1e-9),
                       _metrics(trainer))


# ---------------------------------------------------------------------------- exports
def export(path: Path, config: ADiTConfig, state: dict[str, dict[str, torch.Tensor]],
           dtype: torch.dtype | None = None) -> Path:
    """Config + state dicts only (no code), written atomically; ``dtype`` casts float weights (bf16 halves the size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    cpu_state = {k: {n: cast(t) for n, t in v.items()} for k, v in state.items()}
    torch.save({"format": EXPORT_FORMAT, "config": config.to_dict(), "state": cpu_state}, tmp)
    os.replace(tmp, path)
    return path


def load_export(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except (RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a readable chemgen model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT or "state" not in payload:
        raise ValueError(f"{path}: not a chemgen model export (format {EXPORT_FORMAT})")
    return payload


def load_adit(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ADiT:
    """A trained ADiT (EMA weights) from a model directory holding ``vae.pt`` and ``dit.pt``, or from a
    lineage folder (``manifest.json`` + weight shards, `chemgen.generation.lineage`), in eval mode."""
    model_dir = Path(model_dir)
    if lineage.is_lineage(model_dir):
        checkpoint = lineage.load(model_dir)
        model = ADiT(from_dict(ADiTConfig, checkpoint.manifest["config"], where=str(model_dir / "manifest.json")))
        model.load_checkpoint_groups(checkpoint.groups)
        return model.to(device).eval()
    if not (model_dir / "dit.pt").is_file():
        raise FileNotFoundError(f"{model_dir}: no dit.pt (a model directory holds vae.pt and dit.pt; "
                                "train the DiT stage with `chemgen train adit-dit`)")
    vae, dit = load_export(model_dir / "vae.pt"), load_export(model_dir / "dit.pt")
    model = ADiT(from_dict(ADiTConfig, dit["config"], where=str(model_dir / "dit.pt")))
    model.load_checkpoint_groups({**dit["state"], "vae": vae["state"]["vae"]})  # bf16 exports load as float32
    return model.to(device).eval()


def export_model_dir(model: ADiT, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write a model directory (``vae.pt`` + ``dit.pt``) from a model in memory."""
    out_dir = Path(out_dir)
    export(out_dir / "vae.pt", model.config, {"vae": model.vae.state_dict()}, dtype)
    export(out_dir / "dit.pt", model.config, {k: v for k, v in model.checkpoint_groups().items() if k != "vae"}, dtype)
    return out_dir


# ---------------------------------------------------------------------------- lineages
def stage_state(source: str | os.PathLike, stage: str) -> dict[str, torch.Tensor]:
    """The VAE or DiT (EMA) weights of a model directory, a stage export (``vae.pt``) or a lineage."""
    source = Path(source)
    if lineage.is_lineage(source):
        return lineage.load(source).groups[stage]
    path = source / f"{stage}.pt" if source.is_dir() else source
    return load_export(path)["state"][stage]


def save_lineage(model_dir: str | os.PathLike, folder: str | os.PathLike, steps: dict[str, int],
                 run: dict[str, Any] | None = None, scores: dict[str, float] | None = None,
                 data: list[str] | None = None, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Make a trained model directory the lineage's checkpoint and log the run that produced it.

    ``steps`` counts optimiser steps per stage over the whole lineage (``{"vae": ..., "dit": ...}``);
    ``data`` names the dataset versions (``qm9@<version>``); ``run`` is the line for ``lineage.jsonl``.
    """
    model = load_adit(model_dir)
    manifest = lineage.save(folder, model.checkpoint_groups(), {"model": "adit", "config": model.config.to_dict(), "steps": steps,
                                             "scores": scores or {}, "data": data or []}, dtype=dtype)
    lineage.append_run(folder, {"steps": steps, "scores": scores or {}, "content_hash": manifest["content_hash"],
                                **(run or {})})
    return manifest

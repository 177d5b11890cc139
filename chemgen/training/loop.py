"""One training loop for every model and every machine, built for work per GPU-minute.

`fit` trains one `TrainingStage` (a loss of a `DenseBatch` and the parameters it moves) on
`ResidentBatches` (already on the device) under a Lightning `Trainer`: Lightning brings bf16
autocast, gradient clipping, checkpoints that resume an interrupted run exactly (weights, AdamW
moments, EMA, step and elapsed time: ``<checkpoint_dir>/last.ckpt``, loaded with
``weights_only=True``), the progress bar and the MLflow logger. The step itself does what the GPU
needs and nothing that makes the host wait: fused AdamW, an EMA by ``torch._foreach_lerp_``, the loss
summed on the device and read only every ``log_every`` steps. ``compile=True`` adds ``torch.compile``
with dynamic shapes (one graph for all size buckets; it costs minutes of compilation, so it is
opt-in) and falls back to eager if it fails.

The learning rate follows warmup-stable-decay (Hu et al. 2024, MiniCPM): a linear warm-up,
a constant rate, and a linear decay over the last ``decay_fraction`` of the run. Runs of a
lineage all use the same peak rate, and each ends with its own short decay before it is
evaluated; the next run warms up again from the decayed weights.

Under a launcher (``torchrun``, SLURM; `chemgen.training.distributed`) the same loop trains data-parallel with
Lightning's DDP strategy: each rank steps on its shard of the global batch, DDP averages the gradients, and the
ranks agree on the schedule and on when to stop by taking rank 0's clock every ``sync_every`` steps (a time
budget read on each rank's own clock would let them drift into different learning rates, or one stop while the
others wait for it).

Model FLOP utilisation counts the model's FLOPs per step (``torch.utils.flop_counter``, on
padded tokens) against the chip's dense bf16 peak.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from chemgen.dense import DenseBatch
from chemgen.training.distributed import World
from chemgen.training.resident import ResidentBatches

LossFn = Callable[[DenseBatch], dict[str, torch.Tensor]]

# Dense bf16 peak (no sparsity) of the chips chemgen trains on, FLOP/s.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in PEAK_BF16_FLOPS.items() if chip in name), None)


@dataclass(frozen=True)
class WSDSchedule:
    """Warmup-stable-decay learning rate as a function of the step and of the run's progress in [0, 1]."""

    peak_lr: float
    warmup_steps: int = 500
    decay_fraction: float = 0.2
    final_fraction: float = 0.0

    def lr(self, step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if progress < 1.0 - self.decay_fraction or self.decay_fraction <= 0:
            return self.peak_lr * warm
        into_decay = (progress - (1.0 - self.decay_fraction)) / self.decay_fraction
        scale = 1.0 - (1.0 - self.final_fraction) * min(1.0, into_decay)
        return self.peak_lr * warm * scale


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up, min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow and timm do).

    Without it the average of a short run is mostly its random initialisation: after 944 steps at
    0.999, 0.999^944 = 39 % of the weights are still the initial ones (what broke the first H100 run).
    """
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA:
    """Exponential moving average of parameters, updated with one fused kernel per step."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for p in self.params]

    def to(self, device: torch.device) -> None:
        """Follow the parameters: Lightning moves the model to its device after the EMA is made."""
        self.shadow = [t.to(device) for t in self.shadow]

    @torch.no_grad()
    def update(self) -> None:
        decay = ema_decay_at(self.updates, self.decay)  # a host number: no sync
        torch._foreach_lerp_(self.shadow, [p.float() for p in self.params], 1.0 - decay)
        self.updates += 1

    def state(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": [t.cpu() for t in self.shadow]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for mine, saved in zip(self.shadow, state["shadow"]):
            mine.copy_(saved)

    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged weights into ``module`` (same architecture)."""
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, value in zip(self.names, self.shadow):
                params[name].copy_(value)


@dataclass
class FitResult:
    steps: int
    seconds: float
    systems: int
    compile_seconds: float
    compiled: bool
    losses: list[tuple[int, float]] = field(default_factory=list)
    flops_per_step: float | None = None
    mfu: float | None = None

    @property
    def systems_per_second(self) -> float:
        return self.systems / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "systems": self.systems,
                "systems_per_second": round(self.systems_per_second, 1), "compile_seconds": round(self.compile_seconds, 1),
                "compiled": self.compiled, "flops_per_step": self.flops_per_step, "mfu": self.mfu,
                "final_loss": self.losses[-1][1] if self.losses else None}


def count_flops(loss_fn: LossFn, batch: DenseBatch, params: list[nn.Parameter]) -> float:
    """FLOPs of one forward and backward pass on ``batch`` (matrix products and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss = loss_fn(batch)["loss"]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    del grads
    return float(counter.get_total_flops())


class _Draws:
    """Batches drawn from resident buckets for as long as Lightning asks (the stage decides when to stop)."""

    def __init__(self, data: ResidentBatches):
        self.data = data

    def __iter__(self) -> Iterator[DenseBatch]:
        while True:
            yield self.data.sample()


class StageModule(L.LightningModule):
    """A `TrainingStage` as Lightning trains it, with chemgen's schedule, budget, EMA and sparse loss reads."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter], schedule: WSDSchedule,
                 budget: float | None, max_steps: int | None, weight_decay: float, ema: EMA | None, log_every: int,
                 log: Callable[[str], None], diagnose: Callable[[], dict[str, float]] | None, diagnose_every: int | None,
                 prefix: str = "", grad_clip: float | None = None, world: World | None = None, sync_every: int = 20):
        super().__init__()
        self.world = world or World()
        self.sync_every = sync_every if self.world.distributed else 1
        self.synced_progress = 0.0   # rank 0's clock, as of the last sync
        self.grad_clip = grad_clip
        self.model = model
        self.loss_fn, self.params, self.schedule = loss_fn, params, schedule
        self.budget, self.max_steps, self.weight_decay = budget, max_steps, weight_decay
        self.ema, self.log_every, self.log_line = ema, log_every, log
        self.diagnose, self.diagnose_every = diagnose, diagnose_every
        self.prefix = prefix  # metric names: "<prefix>train/loss", "<prefix>diag/..."
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.steps_before = 0      # steps trained before a resume
        self.systems = 0
        self.losses: list[tuple[int, float]] = []
        self.started = time.perf_counter()
        self.running: torch.Tensor | None = None
        self.since = 0
        self.lr = schedule.lr(0, 0.0)

    # ---------------------------------------------------------------- budget
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def progress(self) -> float:
        step = self.trainer.global_step
        by_time = 0.0 if self.budget is None else (1.0 if self.budget <= 0 else self.elapsed() / self.budget)
        if self.world.distributed and self.budget is not None:
            if step % self.sync_every == 0:   # every rank takes rank 0's clock (one small broadcast)
                self.synced_progress = float(self.trainer.strategy.broadcast(by_time, src=0))
            by_time = self.synced_progress
        return max(by_time, step / self.max_steps if self.max_steps else 0.0)

    # ---------------------------------------------------------------- Lightning hooks
    def configure_optimizers(self) -> torch.optim.Optimizer:
        cuda = self.params[0].device.type == "cuda"
        return torch.optim.AdamW(self.params, lr=self.lr, weight_decay=self.weight_decay,
                                 **({"fused": True} if cuda else {"foreach": True}))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Clipped here, not by Lightning's gradient_clip_val: its AMP plugin refuses to clip for a fused
        # AdamW. bf16 autocast uses no gradient scaler, so the gradients are already unscaled.
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)

    def transfer_batch_to_device(self, batch: DenseBatch, device: torch.device, dataloader_idx: int) -> DenseBatch:
        return batch.to(device)  # resident batches are there already: no copy

    def on_train_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)
        self.started = time.perf_counter()
        self.running = torch.zeros((), device=self.device)

    def on_train_batch_start(self, batch: DenseBatch, batch_idx: int) -> int | None:
        progress = self.progress()
        if progress >= 1.0:
            return -1  # ends the (endless) epoch, and with it the stage
        self.lr = self.schedule.lr(self.trainer.global_step, progress)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = self.lr
        return None

    def training_step(self, batch: DenseBatch, batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(batch)["loss"]
        self.running += loss.detach()
        self.systems += batch.mask.shape[0]
        self.since += 1
        return loss

    def on_train_batch_end(self, outputs: Any, batch: DenseBatch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update()
        step = self.trainer.global_step
        if step % self.log_every == 0:
            self._read_loss(step)
        if self.diagnose is not None and self.diagnose_every and step % self.diagnose_every == 0:
            self._log_metrics({f"diag/{k}": v for k, v in self.diagnose().items()}, step)

    def on_train_end(self) -> None:
        if self.since:
            self._read_loss(self.trainer.global_step, quiet=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["chemgen"] = {"elapsed": self.elapsed(), "systems": self.systems,
                                 "ema": self.ema.state() if self.ema is not None else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("chemgen", {})
        self.steps_before = int(checkpoint.get("global_step", 0))
        self.elapsed_before, self.systems = float(saved.get("elapsed", 0.0)), int(saved.get("systems", 0))
        if self.ema is not None and saved.get("ema") is not None:
            self.ema.load_state(saved["ema"])

    # ---------------------------------------------------------------- reporting
    def _read_loss(self, step: int, quiet: bool = False) -> None:
        running = self.running
        if self.world.distributed:   # every rank reads at the same steps: the mean over all of them
            running = self.trainer.strategy.reduce(running.clone(), reduce_op="mean")
        mean = running.item() / self.since  # the one host sync, every log_every steps
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss became {mean} at step {step}")
        self.losses.append((step, mean))
        rate = self.systems * self.world.size / max(self.elapsed(), 1e-9)
        if not quiet and self.world.is_zero:
            self.log_line(f"step {step:>7d}  loss {mean:.4f}  lr {self.lr:.2e}  {rate:,.0f} systems/s")
        self._log_metrics({"train/loss": mean, "train/lr": self.lr, "train/systems_per_second": rate}, step)
        self.running.zero_()
        self.since = 0

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics({f"{self.prefix}{k}": v for k, v in metrics.items()}, step=step)


def fit(loss_fn: LossFn, params: Iterable[nn.Parameter], data: ResidentBatches, *, schedule: WSDSchedule,
        minutes: float | None = None, max_steps: int | None = None, weight_decay: float = 0.0,
        grad_clip: float = 10.0, ema: EMA | None = None, bf16: bool = True, compile: bool = False,
        log_every: int = 200, log: Callable[[str], None] = print, stop_at: float | None = None,
        model: nn.Module | None = None, checkpoint_dir: str | Path | None = None,
        checkpoint_minutes: float = 10.0, progress_bar: bool = False, logger: Any = None,
        diagnose: Callable[[], dict[str, float]] | None = None, diagnose_every: int | None = None,
        metric_prefix: str = "", world: World | None = None) -> FitResult:
    """Train until ``minutes`` of wall time (after compilation) or ``max_steps`` steps, whichever comes first.

    ``stop_at`` (a ``time.perf_counter()`` instant) is a hard deadline that shortens the time budget,
    compilation included, so that a run on borrowed time ends, decayed, in time to save its results.
    ``model`` is the module the parameters belong to (checkpointed whole); ``checkpoint_dir`` keeps
    ``last.ckpt`` every ``checkpoint_minutes``, and a rerun with the same folder resumes
    from it. ``diagnose`` (every ``diagnose_every`` steps) returns diagnostics logged as ``diag/...``; the logger sees every
    name after ``metric_prefix`` (a stage's name: ``vae/train/loss``).

    ``world`` (`chemgen.training.distributed.world`) trains data-parallel when it has several ranks: ``data`` is
    this rank's shard, on this rank's device; the result counts the systems of every rank.
    """
    if minutes is None and max_steps is None:
        raise ValueError("fit needs a time budget (minutes) or max_steps")
    params = [p for p in params if p.requires_grad]
    device = data.device
    cuda = device.type == "cuda"
    use_bf16 = bf16 and cuda
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    if model is not None:   # a previous stage's Lightning teardown left it on the CPU
        model.to(device)
    flops_per_token = None
    peak = peak_flops(device)
    if peak is not None:  # one eager step on the commonest bucket, before any compile
        bucket = max(data.buckets, key=lambda b: len(b.draw))
        try:
            with autocast:
                flops = count_flops(loss_fn, data.draw(bucket), params)
            flops_per_token = flops / (bucket.batch_size * bucket.size)
        except Exception as err:  # noqa: BLE001 - a counting failure must not cost the training run
            log(f"FLOP count failed ({type(err).__name__}: {err}); no MFU")

    step_fn, compiled = loss_fn, False
    compile_start = time.perf_counter()
    if compile:  # compile on every bucket before the clock starts (gradients of these calls are dropped)
        step_fn, compiled = torch.compile(loss_fn, dynamic=True), True
        try:
            for bucket in data.buckets:
                with autocast:
                    step_fn(ResidentBatches.draw(bucket))["loss"].backward()
        except Exception as err:  # noqa: BLE001 - any compiler failure: train eagerly instead
            log(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training eagerly")
            step_fn, compiled = loss_fn, False
        for p in params:
            p.grad = None
    if cuda:
        torch.cuda.synchronize(device)
    compile_seconds = time.perf_counter() - compile_start

    budget = None if minutes is None else minutes * 60.0
    if stop_at is not None:
        budget = max(0.0, min(budget if budget is not None else float("inf"), stop_at - time.perf_counter()))
    holder = model if model is not None else nn.ParameterList(params)
    world = world or World()
    module = StageModule(holder, step_fn, params, schedule, budget, max_steps, weight_decay, ema, log_every, log,
                         diagnose, diagnose_every, metric_prefix, grad_clip, world)
    callbacks: list[Any] = []
    resume = None
    if checkpoint_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        checkpoint_dir = Path(checkpoint_dir)
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0,
                                         train_time_interval=timedelta(minutes=checkpoint_minutes)))
        last = checkpoint_dir / "last.ckpt"
        resume = str(last) if last.is_file() else None
    if progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar(refresh_rate=10))
    placement: dict[str, Any] = {"devices": [device.index or 0] if cuda else 1}
    if world.distributed:
        from lightning.pytorch.strategies import DDPStrategy

        # one process per device, started by the launcher; gloo between CPU processes, NCCL between GPUs
        placement = {"devices": world.local_size, "num_nodes": world.nodes,
                     "strategy": DDPStrategy(process_group_backend="nccl" if cuda else "gloo")}
    trainer = L.Trainer(accelerator="gpu" if cuda else "cpu", **placement,
                        precision="bf16-mixed" if use_bf16 else "32-true", max_epochs=1, max_steps=-1,
                        logger=logger or False,
                        callbacks=callbacks, enable_checkpointing=checkpoint_dir is not None,
                        enable_progress_bar=progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=checkpoint_dir, log_every_n_steps=log_every)
    safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")   # TF32 for the fp32 output heads while training only:
    # DDP synchronises every parameter of the module that requires a gradient: the stage's own, no others
    trained = {id(p) for p in params}
    frozen = [p for p in holder.parameters() if p.requires_grad and id(p) not in trained] if world.distributed else []
    for p in frozen:
        p.requires_grad_(False)
    try:                                         # diagnostics and sampling keep full float32
        trainer.fit(module, _Draws(data), ckpt_path=resume, **safe)  # checkpoints hold tensors only: never unpickle
    finally:
        torch.set_float32_matmul_precision(precision)
        for p in frozen:
            p.requires_grad_(True)
    holder.to(device)   # Lightning's teardown moves the module to the CPU: diagnostics and sampling run on `device`
    if cuda:
        torch.cuda.synchronize(device)
    result = FitResult(trainer.global_step, module.elapsed(), module.systems * world.size, compile_seconds, compiled,
                       module.losses)
    if flops_per_token is not None and result.seconds > 0:
        result.flops_per_step = flops_per_token * data.mean_batch_tokens
        result.mfu = result.flops_per_step * (trainer.global_step - module.steps_before) / (
            result.seconds - module.elapsed_before) / peak
    return result


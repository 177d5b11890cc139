"""One training loop for every model, built for work per GPU-minute.

The loop takes a loss function of a `DenseBatch` and the parameters it trains; data come from
`ResidentBatches` (already on the device). Per step it does what the GPU needs and nothing that
makes the host wait: bf16 autocast, fused AdamW, gradient clipping without a norm readback,
an EMA by ``torch._foreach_lerp_``, the loss summed on the device and read only every
``log_every`` steps. ``compile=True`` adds ``torch.compile`` with dynamic shapes (one graph for
all size buckets; it costs minutes of compilation, so it is opt-in) and falls back to eager if it fails.

The learning rate follows warmup-stable-decay (Hu et al. 2024, MiniCPM): a linear warm-up,
a constant rate, and a linear decay over the last ``decay_fraction`` of the run. Runs of a
lineage all use the same peak rate, and each ends with its own short decay before it is
evaluated; the next run warms up again from the decayed weights.

Model FLOP utilisation counts the model's FLOPs per step (``torch.utils.flop_counter``, on
padded tokens) against the chip's dense bf16 peak.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from chemgen.dense import DenseBatch
from chemgen.generation.resident import ResidentBatches

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

    @torch.no_grad()
    def update(self) -> None:
        decay = ema_decay_at(self.updates, self.decay)  # a host number: no sync
        torch._foreach_lerp_(self.shadow, [p.float() for p in self.params], 1.0 - decay)
        self.updates += 1

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


def fit(loss_fn: LossFn, params: Iterable[nn.Parameter], data: ResidentBatches, *, schedule: WSDSchedule,
        minutes: float | None = None, max_steps: int | None = None, weight_decay: float = 0.0,
        grad_clip: float = 10.0, ema: EMA | None = None, bf16: bool = True, compile: bool = False,
        log_every: int = 200, log: Callable[[str], None] = print, stop_at: float | None = None) -> FitResult:
    """Train until ``minutes`` of wall time (after compilation) or ``max_steps`` steps, whichever comes first.

    ``stop_at`` (a ``time.perf_counter()`` instant) is a hard deadline that shortens the time budget,
    compilation included, so that a lease-bound run ends, decayed, in time to save its results.
    """
    if minutes is None and max_steps is None:
        raise ValueError("fit needs a time budget (minutes) or max_steps")
    params = [p for p in params if p.requires_grad]
    device = data.device
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=schedule.lr(0, 0.0), weight_decay=weight_decay,
                                  **({"fused": True} if cuda else {"foreach": True}))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and cuda)

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

    step_fn = torch.compile(loss_fn, dynamic=True) if compile else loss_fn
    compiled = compile

    def train_step(batch: DenseBatch) -> torch.Tensor:
        with autocast:
            loss = step_fn(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        return loss.detach()

    # warm-up calls compile the graph on every bucket: real (uncounted) steps whose time is reported apart
    compile_start = time.perf_counter()
    for bucket in data.buckets if compile else []:
        try:
            train_step(ResidentBatches.draw(bucket))
        except Exception as err:  # noqa: BLE001 - any compiler failure: train eagerly instead
            log(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training eagerly")
            step_fn, compiled = loss_fn, False
            optimizer.zero_grad(set_to_none=True)
            break
    if cuda:
        torch.cuda.synchronize(device)
    compile_seconds = time.perf_counter() - compile_start

    budget = None if minutes is None else minutes * 60.0
    start = time.perf_counter()
    if stop_at is not None:
        budget = max(0.0, min(budget if budget is not None else float("inf"), stop_at - start))
    result = FitResult(0, 0.0, 0, compile_seconds, compiled)
    running, since, systems = torch.zeros((), device=device), 0, 0
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        progress = max(elapsed / budget if budget else (1.0 if budget == 0.0 else 0.0),
                       step / max_steps if max_steps else 0.0)
        if progress >= 1.0:
            break
        lr = schedule.lr(step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = data.sample()
        running += train_step(batch)
        systems += batch.mask.shape[0]
        since += 1
        step += 1
        if step % log_every == 0:
            mean = running.item() / since  # the one host sync, every log_every steps
            if not math.isfinite(mean):
                raise FloatingPointError(f"training loss became {mean} at step {step}")
            result.losses.append((step, mean))
            rate = systems / (time.perf_counter() - start)
            log(f"step {step:>7d}  loss {mean:.4f}  lr {lr:.2e}  {rate:,.0f} systems/s")
            running.zero_()
            since = 0
    if cuda:
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    result.steps, result.systems = step, systems
    if since:
        result.losses.append((step, running.item() / since))
    if flops_per_token is not None and result.seconds > 0:
        result.flops_per_step = flops_per_token * data.mean_batch_tokens
        result.mfu = result.flops_per_step * step / result.seconds / peak
    return result

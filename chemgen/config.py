"""Typed model configs: nested frozen dataclasses loaded from YAML shipped in the package (chemgen/configs/).

Dataclasses (not pydantic) keep the training path importable on GPU machines that have
only torch and lightning. `load_config` rejects unknown keys and wrong types with a
message that names the file and the key. The named configs (``tiny``, ``cpu``, ...) are package data,
read through importlib.resources, so an installed wheel finds them as a checkout does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar


from chemgen.errors import ChemgenError

CONFIGS_PACKAGE = "chemgen.configs"  # <model>-<name>.yaml files, shipped in the wheel


class ConfigError(ChemgenError, ValueError):
    """A config file with a missing, unknown or mistyped key."""


@dataclass(frozen=True)
class DataConfig:
    """What a model trains on (the ``data:`` section of a model config)."""

    datasets: tuple[str, ...] = ("qm9", "mp20")
    """Curated datasets (`chemgen.datasets`); DiffSpectra's is ``[qm9]``: the spectra store of QM9's molecules."""
    limit_per_dataset: int | None = None
    """Train on the first N systems of each dataset only (tiny slices for tests and demos); None: all."""


@dataclass(frozen=True)
class TrainConfig:
    """How one training stage trains (the ``<stage>_train`` section of a model config); every field is read by
    `chemgen.training.stages.train_stages`, and a run logs the values it used."""

    tokens_per_batch: int = 4096
    """Padded atoms per optimiser step on a CPU. Batches are drawn from size buckets, so atoms, not systems, set
    the work of a step."""
    cuda_tokens_per_batch: int = 65_536
    """Padded atoms per optimiser step on a CUDA device (fed larger batches than a CPU)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW's warmup-stable-decay schedule; every run of a lineage uses the same one."""
    warmup_steps: int = 300
    """Linear warm-up at the start of every run."""
    decay_fraction: float = 0.2
    """Share of a run's budget spent decaying the learning rate to 0, so that each run ends decayed."""
    weight_decay: float = 0.0
    """AdamW's weight decay."""
    grad_clip: float = 10.0
    """Gradient norm clip."""
    ema_decay: float = 0.9999
    """Decay of the weights' exponential moving average, where the model keeps one (the average is what is saved)."""
    max_steps: int | None = None
    """Optimiser steps of one run when the caller names no budget (with ``max_minutes``: whichever ends first).
    A stage with neither is not trained unless the caller gives it a budget."""
    max_minutes: float | None = None
    """Training minutes of one run when the caller names no budget."""
    val_every_steps: int = 1_000
    """In-stage diagnostics on held-out systems, logged as ``<stage>/diag/...``."""
    checkpoint_minutes: float = 10.0
    """Interval of the resumable checkpoint of a running stage."""
    seed: int = 42
    """Seeds the batches a run draws (offset by the steps its lineage has trained: a continued lineage draws new
    batches, and a rerun the same ones) and a fresh model's initial weights."""

    def __post_init__(self) -> None:
        if self.tokens_per_batch < 1 or self.cuda_tokens_per_batch < 1:
            raise ConfigError(f"tokens_per_batch and cuda_tokens_per_batch must be positive, got "
                              f"{self.tokens_per_batch} and {self.cuda_tokens_per_batch}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")

    def tokens_for(self, device_type: str) -> int:
        """Padded atoms per step on a device of this type (``"cuda"``, ``"cpu"``, ...)."""
        cpu, cuda = self.tokens_per_batch, self.cuda_tokens_per_batch
        return cuda if device_type == "cuda" else cpu


class ModelConfig:
    """What every model's top-level config dataclass offers (its sections are dataclasses of their own)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, Any]:
        """``section.key -> value`` (nested sections joined by dots) for experiment trackers."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, values: dict[str, Any]) -> None:
            for key, value in values.items():
                if isinstance(value, dict):
                    walk(f"{prefix}{key}.", value)
                else:
                    flat[f"{prefix}{key}"] = value

        walk("", self.to_dict())
        return flat

    def stage_config(self, stage: str) -> TrainConfig:
        """The `TrainConfig` of a training stage: the ``<stage>_train`` section."""
        section = getattr(self, f"{stage}_train", None)
        if not isinstance(section, TrainConfig):
            raise ConfigError(f"config {getattr(self, 'name', '?')!r} has no {stage}_train section")
        return section


# Keys of older configs (lineage manifests and registered models keep the config they were trained with):
# `upgrade_config_dict` reads them into today's fields. A YAML file with one of them is refused with its new name.
RETIRED_TRAIN_KEYS = {
    "batch_size": "tokens_per_batch (padded atoms per step; 16 x the old batch_size is what the CPU used)",
    "checkpoint_every_steps": "checkpoint_minutes",
    "num_workers": "nothing: training data is resident on the device",
    "datasets": "the top-level data: section",
    "limit_per_dataset": "the top-level data: section",
}


def upgrade_config_dict(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict saved by an older chemgen (a lineage manifest's ``config``) in today's fields: the first
    stage's ``datasets`` and ``limit_per_dataset`` become the ``data`` section, ``batch_size`` becomes
    ``tokens_per_batch`` (16 x, what a CPU run used), and keys with no successor are dropped. The values a
    lineage trained with are kept; nothing a model builds from changes."""
    values = dict(values)
    data: dict[str, Any] = dict(values.get("data") or {})
    for key in [k for k in values if k.endswith("_train") and isinstance(values[k], dict)]:
        section = dict(values[key])
        for moved in ("datasets", "limit_per_dataset"):
            if moved in section:
                data.setdefault(moved, section.pop(moved))
        if "batch_size" in section:
            section.setdefault("tokens_per_batch", 16 * int(section.pop("batch_size")))
        for retired in ("checkpoint_every_steps", "num_workers"):
            section.pop(retired, None)
        values[key] = section
    if data:
        values["data"] = data
    return values


T = TypeVar("T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation) or (
            annotation in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], values: Any, where: str = "config") -> T:
    """Build a (nested) config dataclass, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        retired = [f"{k} (now {RETIRED_TRAIN_KEYS[k]})" for k in unknown if cls is TrainConfig and k in RETIRED_TRAIN_KEYS]
        if retired:
            raise ConfigError(f"{where}: retired key(s): {'; '.join(retired)}")
        raise ConfigError(f"{where}: unknown key(s) {unknown} (known: {sorted(known)})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err


def config_dir() -> Traversable:
    """The shipped configs (a folder in a checkout or an installed package alike)."""
    return resources.files(CONFIGS_PACKAGE)


def known_configs(model: str = "adit") -> list[str]:
    """Names of the shipped configs of ``model`` (``tiny``, ``cpu``, ...)."""
    return sorted(p.name.removeprefix(f"{model}-").removesuffix(".yaml") for p in config_dir().iterdir()
                  if p.name.startswith(f"{model}-") and p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str | Path, model: str = "adit") -> Path | Traversable:
    """``tiny`` -> the shipped ``<model>-tiny.yaml`` (also ``adit-tiny``); a YAML path is used as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    name = str(name_or_path).removeprefix(f"{model}-")
    candidate = config_dir() / f"{model}-{name}.yaml"
    if not candidate.is_file():
        known = ", ".join(known_configs(model)) or f"none: package data {CONFIGS_PACKAGE} has no {model}-*.yaml"
        raise ConfigError(f"no {model} config named {name_or_path!r} (known: {known})")
    return candidate



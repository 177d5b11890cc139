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
class TrainConfig:
    datasets: tuple[str, ...] = ("qm9", "mp20")
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    max_steps: int = 100_000
    val_every_steps: int = 1_000
    checkpoint_every_steps: int = 1_000
    ema_decay: float = 0.9999
    seed: int = 42
    num_workers: int = 0
    limit_per_dataset: int | None = None  # tiny slices for tests and demos


class ModelConfig:
    """What every model's top-level config dataclass offers (its sections are dataclasses of their own)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, Any]:
        """``section.key -> value`` for experiment trackers."""
        return {f"{section}.{k}": v for section, values in self.to_dict().items() if isinstance(values, dict)
                for k, v in values.items()}


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



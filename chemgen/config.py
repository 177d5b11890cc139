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
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from chemgen.errors import ChemgenError

CONFIGS_PACKAGE = "chemgen.configs"  # <model>-<name>.yaml files, shipped in the wheel


class ConfigError(ChemgenError, ValueError):
    """A config file with a missing, unknown or mistyped key."""


@dataclass(frozen=True)
class VAEConfig:
    d_model: int = 512
    num_heads: int = 8
    dim_feedforward: int = 2048
    encoder_layers: int = 8
    decoder_layers: int = 8
    latent_dim: int = 8
    max_atom_types: int = 100
    kl_weight: float = 1e-5
    # ADiT's loss weights: periodic (crystals) / non-periodic (molecules)
    weight_atom_types: float = 1.0
    weight_lengths: float = 1.0
    weight_angles: float = 10.0
    weight_frac_coords: float = 10.0
    weight_pos: float = 10.0          # positions in nm^2: 10 here is 0.1 per A^2
    # chemgen's optional short-distance term (A^2) on molecular pairs closer than distance_cutoff (A)
    weight_distance: float = 0.0
    distance_cutoff: float = 2.0
    # Denoising corruption during training: fraction of atom types masked, of positions jittered
    corrupt_fraction: float = 0.1
    corrupt_pos_std: float = 0.1  # Angstrom
    # chemgen: Gaussian noise added to the latents the decoder sees in training, relative to their
    # standard deviation, so that it tolerates the DiT's errors (0 = ADiT)
    latent_noise: float = 0.0
    augment_rotation: bool = True
    augment_translation: bool = True


@dataclass(frozen=True)
class DiTConfig:
    d_model: int = 384
    num_heads: int = 6
    num_layers: int = 12
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1
    num_datasets: int = 5  # conditioning labels 1..num_datasets, 0 = CFG's null class
    # the labels' datasets in order (label = position + 1): saved with every export and lineage, so a model
    # trained with one order is never read with another (chemgen.dense.DATASET_INDEX must agree)
    datasets: tuple[str, ...] = ("mp20", "qm9", "mpts52", "perov5", "carbon24")
    num_spacegroups: int = 230
    spacegroup_conditioning: bool = False
    # REPA (Yu et al. 2025): align the DiT's hidden states after block `repa_depth` (1-based), through a small
    # MLP, with the frozen VAE encoder's states of the clean system (negative cosine similarity, this weight);
    # 0 turns it off (no projector in the checkpoint)
    repa_weight: float = 0.0
    repa_depth: int = 2


@dataclass(frozen=True)
class FlowConfig:
    min_t: float = 0.01
    num_steps: int = 100
    self_condition_prob: float = 0.5
    cfg_scale: float = 2.0
    solver: str = "euler"

    def __post_init__(self) -> None:
        if self.solver not in ("euler", "heun"):
            raise ConfigError(f"solver must be 'euler' or 'heun', got {self.solver!r}")


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


@dataclass(frozen=True)
class ADiTConfig(ModelConfig):
    name: str = "adit"
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae_train: TrainConfig = field(default_factory=TrainConfig)
    dit_train: TrainConfig = field(default_factory=TrainConfig)


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


def load_config(name_or_path: str | Path, model: str = "adit") -> Any:
    """A model's config (a shipped name such as ``tiny``, or a YAML path) as its config dataclass."""
    from chemgen.generation.protocol import config_type

    path = resolve_config_path(name_or_path, model)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return from_dict(config_type(model), values or {}, where=str(path))

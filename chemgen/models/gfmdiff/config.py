"""GFMDiff's config: the Dual-Track Transformer, the diffusion, and the training of its one stage.

Defaults are the reference's (``config/model/gfmdiff.yaml`` and ``config/dataset/qm9.yaml`` of
LEOXC1571/GFMDiff): 5 InterBlocks, emb 256, hidden 512, 8 heads, dropout 0.1; T = 500, polynomial_2,
precision 1e-5; norm_values [4, 10, 10] for one-hot types, atomic number and valence; GFLoss weight
0.01; EMA 0.999, lr 1e-4. The shipped sizes (`preset`, chemgen/configs/gfmdiff-*.yaml): ``tiny`` (tests), ``cpu``, ``gpu`` (the paper's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chemgen.config import ConfigError, DataConfig, ModelConfig, TrainConfig


@dataclass(frozen=True)
class DTNConfig:
    num_blocks: int = 5
    emb_dim: int = 256
    hidden_dim: int = 512
    num_heads: int = 8
    dropout: float = 0.1
    coord_range: float = 20.0   # bound on each pair's position update, |tanh| x coord_range (A)

    def __post_init__(self) -> None:
        if self.emb_dim % self.num_heads or self.emb_dim % 2:
            raise ConfigError(f"emb_dim {self.emb_dim} must be even and divisible by num_heads {self.num_heads}")


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 500
    noise_schedule: str = "polynomial_2"
    noise_precision: float = 1e-5
    norm_values: tuple[float, ...] = (4.0, 10.0, 10.0)   # one-hot types, atomic number, valence
    num_steps: int = 500        # sampling steps: T is EDM's sampler; fewer subsample the schedule (quick looks)
    gfloss: bool = True         # False: the ablation without GFLoss
    gfloss_weight: float = 0.01

    def __post_init__(self) -> None:
        if len(self.norm_values) != 3:
            raise ConfigError(f"norm_values needs 3 values (types, atomic number, valence), got {self.norm_values}")
        if not 1 <= self.num_steps <= self.timesteps:
            raise ConfigError(f"num_steps must be in 1..timesteps={self.timesteps}, got {self.num_steps}")


def _train(**changes: Any) -> TrainConfig:
    base = TrainConfig(tokens_per_batch=1024, cuda_tokens_per_batch=8192, lr=1e-4, ema_decay=0.999)
    return dataclasses.replace(base, **changes)


@dataclass(frozen=True)
class GFMDiffConfig(ModelConfig):
    name: str = "gfmdiff"
    data: DataConfig = field(default_factory=lambda: DataConfig(("qm9",)))
    dtn: DTNConfig = field(default_factory=DTNConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    denoiser_train: TrainConfig = field(default_factory=_train)


def preset(name: str) -> GFMDiffConfig:
    """A shipped config by name: ``tiny`` (tests), ``cpu`` (the lineage that trains on CPU and GPU alike),
    ``gpu`` (the paper's network and recipe); chemgen/configs/gfmdiff-<name>.yaml."""
    from chemgen.models.specs import load_config

    return load_config(name, "gfmdiff")


PRESETS = ("tiny", "cpu", "gpu")

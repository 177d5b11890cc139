"""The contract between chemgen's shared machinery and a generative model.

A model folder (``chemgen/models/<name>/``) holds its networks, its losses and its config; the
generation layer holds what every model shares (the training loop, resident batches, lineages, the
GPU runner). They meet here: a model is a `Generator`, built from its config, that names its
training stages in order and hands each one to the loop as a `TrainingStage`, generates padded
samples, and exposes its weights as named groups of tensors for lineages.

`MODELS` maps a model's name to ``module:class`` so that the runner imports only the model asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from chemgen.data.tensors import TensorPack
from chemgen.dense import DenseBatch

MODELS: dict[str, str] = {"adit": "chemgen.models.adit.model:ADiT"}


@dataclass
class TrainingStage:
    """One stage as the loop trains it: a loss of a batch, the parameters it moves, and how."""

    name: str
    loss: Callable[[DenseBatch], dict[str, torch.Tensor]]
    parameters: list[nn.Parameter]
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    ema_module: nn.Module | None = None     # averaged during training, its average kept at the end
    ema_decay: float = 0.999
    info: dict[str, Any] = field(default_factory=dict)   # what preparing the stage measured (reported)


@runtime_checkable
class Generator(Protocol):
    config: Any
    stage_names: tuple[str, ...]

    def training_stage(self, name: str, train: TensorPack) -> TrainingStage:
        """Put the model in the state the stage trains in (freezing, fitted scales) and describe it."""

    def stage_diagnostics(self, name: str, val: TensorPack, out_dir: Path) -> dict[str, Any]:
        """Measurements after a stage on held-out systems; may write one file into ``out_dir``."""

    def generate(self, num_samples: int, kind: str, num_steps: int | None = None, solver: str | None = None,
                 cfg_scale: float | None = None, seed: int | None = None) -> Any:
        """Padded samples (``atomic_numbers, pos, frac_coords, cell, mask, periodic``)."""

    def checkpoint_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights a lineage stores, by group."""

    def load_checkpoint_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load what `checkpoint_groups` gave (strict: a mismatch raises)."""


def generator_class(model: str) -> type:
    """The class registered under ``model`` (imported on demand)."""
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    module, name = MODELS[model].split(":")
    return getattr(importlib.import_module(module), name)

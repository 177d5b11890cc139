"""The contract between chemgen's shared machinery and a generative model.

A model folder (``chemgen/models/<name>/``) holds its networks, its losses and its config; the shared
layers hold what every model shares (`chemgen.training`: the loop, resident batches, runs on any machine;
`chemgen.lineage`: weights; `chemgen.sampling` and `chemgen.registry`). They meet here: a model is a `Generator`, built from its config, that names its
training stages in order and hands each one to the loop as a `TrainingStage`, generates padded
samples, and exposes its weights as named groups of tensors for lineages.

`chemgen.models.specs.MODELS` maps a model's name to its `ModelSpec` (where its class and config type live,
the name it registers under, its shipped lineage), so that every shared command imports only the model asked
for. Adding a model means its folder and one entry there. A model that trains on other data than the curated store
names its `ModelSpec.pack_builder`; one that answers other requests than "n structures of a dataset" names its
own `ModelSpec.pyfunc`; one that samples no dataset unconditionally has empty ``sample_datasets`` (no
``chemgen sample MODEL``, and nothing for a run to score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:   # annotations only: naming a model (the CLI, specs) must not cost torch's import
    import torch
    from torch import nn

    from chemgen.data.tensors import TensorPack
    from chemgen.dense import DenseBatch


@dataclass(frozen=True)
class ModelSpec:
    """What the shared layer needs to know about a model, by name."""

    name: str                     # the CLI's MODEL and the lineage manifest's "model"
    generator: str                # "module:Class" implementing `Generator`
    config_type: str              # "module:Class" of its config dataclass (chemgen/configs/<name>-<config>.yaml)
    registered_name: str          # its name in the MLflow registry (demo runs append "-<profile>")
    shipped_config: str           # the lineage under models/weights/ that `chemgen sample MODEL` uses
    sample_datasets: tuple[str, ...]  # what a training run samples and scores, in order
    metadata: dict[str, str] = field(default_factory=dict)   # logged with every registered version
    run_scorers: tuple[str, ...] = ()  # "module:function"s scoring a run folder's model-specific files
    # How samples are drawn, as (context key, dotted config path): part of the gate's evaluation context
    sampling_settings: tuple[tuple[str, str], ...] = (("sampling_steps", "flow.num_steps"), ("cfg_scale", "flow.cfg_scale"))
    # "module:function" building (train pack, validation pack, dataset manifests) from a `DataConfig`, the store
    # and pinned versions, as `chemgen.training.packs.training_packs` does from the curated store; None: that
    pack_builder: str | None = None
    # the module logged as the registry pyfunc ("models from code"): a `PythonModel` set with
    # ``mlflow.models.set_model`` and a ``signature()`` of its requests and answers
    pyfunc: str = "chemgen.registry.generator_pyfunc"


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

    def training_stage(self, name: str, train: TensorPack, trained: tuple[str, ...] = ()) -> TrainingStage:
        """Put the model in the state the stage trains in (freezing, fitted scales) and describe it;
        ``trained`` names the stages this run has trained before it."""

    def stage_monitor(self, name: str, batch: DenseBatch) -> dict[str, float]:
        """Quick measurements on a held-out batch during the stage (logged as ``diag/...``)."""

    def stage_diagnostics(self, name: str, val: TensorPack, out_dir: Path) -> dict[str, Any]:
        """Measurements after a stage on held-out systems; may write one file into ``out_dir``."""

    def generate(self, num_samples: int, kind: str, num_steps: int | None = None, solver: str | None = None,
                 cfg_scale: float | None = None, seed: int | None = None) -> Any:
        """Padded samples (``atomic_numbers, pos, frac_coords, cell, mask, periodic``)."""

    def checkpoint_groups(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weights a lineage stores, by group."""

    def load_checkpoint_groups(self, groups: dict[str, dict[str, torch.Tensor]]) -> None:
        """Load what `checkpoint_groups` gave (strict: a mismatch raises)."""



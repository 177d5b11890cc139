"""The models chemgen knows, by name: `MODELS`, the one registry of `ModelSpec` entries, and the lookups on it.

Every shared command (train, sample, register, the flows) names a model by its key here and imports only that
model, on demand (`import_object` of the spec's ``"module:Class"`` strings). Adding a model means its folder
under ``chemgen/models/`` and one entry here. `load_config` reads a model's shipped or user YAML config into
its config dataclass.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from chemgen.config import ConfigError, from_dict, resolve_config_path
from chemgen.errors import ChemgenError
from chemgen.models.protocol import ModelSpec

MODELS: dict[str, ModelSpec] = {
    "adit": ModelSpec("adit", "chemgen.models.adit.model:ADiT", "chemgen.models.adit.config:ADiTConfig", "chemgen-adit",
                      "adit-gpu-quick", ("qm9", "mp20"),
                      {"architecture": "ADiT", "paper": "Joshi et al., All-atom Diffusion Transformers, ICML 2025"},
                      ("chemgen.models.adit.diagnostics:score_run_reconstructions",)),
    "gfmdiff": ModelSpec("gfmdiff", "chemgen.models.gfmdiff.model:GFMDiff",
                         "chemgen.models.gfmdiff.config:GFMDiffConfig", "chemgen-gfmdiff", "gfmdiff-cpu", ("qm9",),
                         {"architecture": "GFMDiff",
                          "paper": "Xu et al., Geometric-Facilitated Denoising Diffusion Model for 3D Molecule "
                                   "Generation, AAAI 2024"},
                         sampling_settings=(("sampling_steps", "diffusion.num_steps"),)),
    # Conditional only: it samples molecules for given spectra (`chemgen elucidate`), so a run samples no dataset
    # and its packs come from the spectra store, not the curated QM9 store.
    "diffspectra": ModelSpec("diffspectra", "chemgen.models.diffspectra.model:DiffSpectra",
                             "chemgen.models.diffspectra.config:DiffSpectraConfig", "chemgen-diffspectra",
                             "diffspectra-cpu", (),
                             {"architecture": "DiffSpectra",
                              "paper": "Wang et al., DiffSpectra: Molecular Structure Elucidation from Spectra "
                                       "using Diffusion Models, 2025"},
                             sampling_settings=(("sampling_steps", "diffusion.num_steps"),),
                             pack_builder="chemgen.models.diffspectra.packs:training_packs",
                             pyfunc="chemgen.registry.elucidation_pyfunc"),
}


class UnknownModelError(ChemgenError, KeyError):
    """A model name that is not in `MODELS`."""

    def __str__(self) -> str:   # KeyError's own str() quotes the message
        return str(self.args[0])


def model_spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise UnknownModelError(f"unknown model {model!r} (known: {', '.join(MODELS)})")
    return MODELS[model]


def import_object(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def generator_class(model: str) -> type:
    """The class registered under ``model`` (imported on demand)."""
    return import_object(model_spec(model).generator)


def config_type(model: str) -> type:
    return import_object(model_spec(model).config_type)


def load_config(name_or_path: str | Path, model: str = "adit") -> Any:
    """A model's config (a shipped name such as ``tiny``, or a YAML path) as its config dataclass."""
    path = resolve_config_path(name_or_path, model)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    return from_dict(config_type(model), values or {}, where=str(path))

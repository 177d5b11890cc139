"""DiffSpectra as a source of candidates: its samples for one query's spectra, grouped and ranked.

`elucidate_spectra` samples molecules for spectra on the grid and ranks them (`chemgen.elucidation.ranking`);
`load_elucidator` finds the model (a lineage folder, a registry URI, or the shipped lineage); `check_formula` and
`check_settings` refuse what DiffSpectra cannot sample before anything is loaded (its elements are QM9's H, C,
N, O, F; at most 29 atoms). torch is imported only when a model samples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.elucidation.identity import hill_formula, parse_formula
from chemgen.elucidation.ranking import Ranking, rank_candidates
from chemgen.errors import ChemgenError, UsageError

# A query's default draw: 32 samples of 100 ancestral steps take about 40-60 s on one CPU core and leave the
# re-ranking's xTB time inside two minutes. The reference samples 1,000 steps: --steps 1000 for that, ~10x slower.
DEFAULT_SAMPLES = 32
DEFAULT_STEPS = 100
DEFAULT_TOP_K = 10
MAX_SAMPLES = 10_000                 # per query: beyond this a CPU run takes days


class NoTrainedModelError(ChemgenError, FileNotFoundError):
    """No model was named and no trained DiffSpectra ships with this checkout."""


def check_formula(formula: str | None) -> tuple[str, int] | None:
    """(Hill formula, number of atoms) of a molecular formula DiffSpectra can sample, or None for None.

    Raises `UsageError` for a formula `parse_formula` refuses, an element outside QM9's H, C, N, O, F, or more
    atoms than QM9's largest molecule."""
    if formula is None:
        return None
    from chemgen.atoms import SYMBOLS
    from chemgen.models.diffspectra.data import MAX_ATOMS
    from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS

    counts = parse_formula(formula)
    allowed = [SYMBOLS[z] for z in ATOM_ELEMENTS]
    other = sorted(set(counts) - set(allowed))
    if other:
        raise UsageError(f"molecular formula {formula!r}: DiffSpectra's molecules are made of {', '.join(allowed)} "
                         f"(QM9's elements), not {', '.join(other)}")
    atoms = sum(counts.values())
    if atoms > MAX_ATOMS:
        raise UsageError(f"molecular formula {formula!r} has {atoms} atoms; DiffSpectra samples at most {MAX_ATOMS} "
                         "(QM9's largest molecule)")
    return hill_formula(counts), atoms


def check_settings(num_samples: int, top_k: int | None, num_steps: int | None, seed: int | None) -> None:
    """The sampling options, or `UsageError` naming the one that is wrong."""
    for name, value, low, optional in (("num_samples", num_samples, 1, False), ("top_k", top_k, 1, True),
                                       ("num_steps", num_steps, 1, True), ("seed", seed, 0, True)):
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UsageError(f"{name} must be a whole number >= {low}, got {value!r}")
    if num_samples > MAX_SAMPLES:
        raise UsageError(f"num_samples must be at most {MAX_SAMPLES:,} per query, got {num_samples:,}")


def default_model() -> Path:
    """The shipped DiffSpectra lineage (``models/weights/diffspectra-cpu``), or `NoTrainedModelError` saying how
    to get one."""
    from chemgen import lineage
    from chemgen.models.specs import model_spec
    from chemgen.lineage import shipped_lineage

    spec = model_spec("diffspectra")
    folder = shipped_lineage(spec.shipped_config)
    if not lineage.is_lineage(folder):
        raise NoTrainedModelError(
            f"no trained DiffSpectra at {folder}: train one with `chemgen train diffspectra --config cpu --steps "
            "specformer=5000,denoiser=20000 --out RUN` and pass --model RUN/lineage (or a registered "
            f"models:/{spec.registered_name}@ALIAS)")
    return folder


def load_elucidator(model: Any = None) -> Any:
    """A DiffSpectra from a lineage folder, a registry URI, an already loaded model, or (None) the shipped one."""
    from chemgen.models.loading import load_model

    if model is None:
        model = default_model()
    loaded = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if not callable(getattr(loaded, "elucidate", None)):
        what = getattr(getattr(loaded, "config", None), "name", type(loaded).__name__)
        raise UsageError(f"{model}: a {what} model, which samples no molecules for spectra; elucidation needs a "
                         "DiffSpectra lineage")
    return loaded


def elucidate_spectra(model: Any, spectra: Mapping[str, Any], formula: str | None = None,
                      num_samples: int = DEFAULT_SAMPLES, num_steps: int | None = DEFAULT_STEPS, seed: int | None = 0,
                      top_k: int | None = DEFAULT_TOP_K) -> Ranking:
    """Sample ``num_samples`` molecules for one query's spectra ({kind: values or (values, covered)} on
    `GRID_CM1`) and rank them (`rank_candidates`); a formula fixes each sample's atom count and filters."""
    import torch

    from chemgen.elucidation.rerank import query_arrays

    check_settings(num_samples, top_k, num_steps, seed)
    wanted = check_formula(formula)
    arrays = query_arrays(spectra)   # shape and finiteness, per kind
    modalities = tuple(model.config.specformer.modalities)
    unused = sorted(set(arrays) - set(modalities))
    if unused:
        raise UsageError(f"this DiffSpectra reads {', '.join(modalities)} spectra, not {', '.join(unused)}")
    tensors = {m: torch.as_tensor(arrays[m][0], dtype=torch.float32)[None] if m in arrays else None
               for m in modalities}
    present = torch.tensor([[m in arrays for m in modalities]])
    num_atoms = None if wanted is None else torch.tensor([wanted[1]])
    samples = model.elucidate(tensors, present, num_samples=int(num_samples), num_atoms=num_atoms,
                              num_steps=num_steps, seed=seed)[0]
    return rank_candidates(samples, None if wanted is None else wanted[0], top_k)

"""Compatibility for ADiT versions registered before the shared generation layer.

Their pyfunc code (logged with them, "models from code") imports ``load_adit`` from here and reads a
model folder of two exports, ``vae.pt`` and ``dit.pt`` (config + state dicts, loaded with
``weights_only=True``). New models are lineage folders (`chemgen.generation.jobs.load_lineage_model`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from chemgen.generation.lineage import LineageError

EXPORT_FORMAT = 1


def load_export(path: str | os.PathLike) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except (RuntimeError, EOFError, ValueError) as err:
        raise LineageError(f"{path}: not a readable chemgen model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT or "state" not in payload:
        raise LineageError(f"{path}: not a chemgen model export (format {EXPORT_FORMAT})")
    return payload


def load_adit(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """An ADiT from a lineage folder or an old model folder (``vae.pt`` + ``dit.pt``), in eval mode."""
    from chemgen.config import ADiTConfig, from_dict
    from chemgen.generation import lineage
    from chemgen.generation.jobs import load_lineage_model
    from chemgen.models.adit.model import ADiT

    model_dir = Path(model_dir)
    if lineage.is_lineage(model_dir):
        return load_lineage_model(model_dir, str(device))
    vae, dit = load_export(model_dir / "vae.pt"), load_export(model_dir / "dit.pt")
    model = ADiT(from_dict(ADiTConfig, dit["config"], where=str(model_dir / "dit.pt")))
    model.load_checkpoint_groups({**dit["state"], "vae": vae["state"]["vae"]})  # bf16 exports load as float32
    return model.to(device).eval()

"""Trained models back as generators: from a lineage folder, the shipped lineage of a model, or a registry URI.

Every reader of a trained model calls these (sampling, elucidation, the benchmarks, the flows, the registry's
pyfuncs); they need torch, the model's own folder and, for ``models:/`` URIs only, MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chemgen import lineage, tracking
from chemgen.models.specs import config_type, generator_class, model_spec


def load_model(model: str | os.PathLike, device: str = "cpu") -> Any:
    """A trained generator (EMA weights, eval mode) from a lineage folder or a registry URI such as
    ``models:/chemgen-adit@champion``."""
    if str(model).startswith("models:/") or str(model).startswith("runs:/"):
        import mlflow

        tracking.configure()
        pyfunc = mlflow.pyfunc.load_model(str(model))
        return pyfunc.unwrap_python_model().model.to(device)
    return load_lineage_model(model, device)


def registered_lineage(uri: str) -> Path | None:
    """A local copy of a registered version's checkpoint (its lineage folder, the pyfunc's ``model_dir``
    artifact), downloaded without building the model; None for versions registered before lineages."""
    import mlflow

    tracking.configure()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    return next((m.parent for m in sorted(local.glob("artifacts/*/manifest.json")) if lineage.is_lineage(m.parent)),
                None)


def load_lineage_model(folder: str | os.PathLike, device: str = "cpu") -> Any:
    """The generator a lineage folder holds: its manifest names the model and its config."""
    from chemgen.config import from_dict, upgrade_config_dict

    folder = Path(folder)
    if not lineage.is_lineage(folder):
        raise FileNotFoundError(f"{folder}: not a trained model (a lineage folder with manifest.json and weight "
                                "shards, as `chemgen train MODEL` writes)")
    checkpoint = lineage.load(folder)
    name = checkpoint.manifest.get("model", "adit")
    config = from_dict(config_type(name), upgrade_config_dict(checkpoint.manifest["config"]),
                       where=str(folder / "manifest.json"))
    model = generator_class(name)(config)
    model.load_checkpoint_groups(checkpoint.groups)
    return model.to(device).eval()


def shipped_model(model: str = "adit") -> Path:
    """The model's shipped champion checkpoint (a lineage folder committed to the project)."""
    folder = lineage.shipped_lineage(model_spec(model).shipped_config)
    if not lineage.is_lineage(folder):
        raise FileNotFoundError(f"{folder}: no shipped checkpoint of {model} in this checkout; name a model with --model")
    return folder

"""A trained model (a lineage folder) as a new version of the MLflow model registry.

The version is a pyfunc logged as "models from code" (the model's `ModelSpec.pyfunc` module, e.g.
`chemgen.registry.generator_pyfunc`) with the lineage folder as its artifact, registered with an alias
(``challenger`` by default); `chemgen.gates` decides later whether it becomes ``champion``. The version carries
what a fresh environment needs (`chemgen.registry.wheel`: the chemgen wheel as an artifact, named by its
``requirements.txt``) and its model card (`chemgen.registry.cards`) as its description.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from chemgen import lineage, tracking
from chemgen.models.loading import load_model
from chemgen.models.specs import model_spec
from chemgen.registry.cards import model_card, registry_description
from chemgen.registry.wheel import chemgen_wheel

log = logging.getLogger(__name__)


def register(model_dir: str | os.PathLike, name: str | None = None, metrics: dict[str, float] | None = None,
             alias: str = tracking.CHALLENGER, tags: dict[str, str] | None = None) -> Any:
    """Log a trained model (a lineage folder) as a pyfunc and register a version with ``alias``
    (default name: the model's, e.g. ``chemgen-adit``).

    If anything fails after the version exists, the version is deleted again: the registry
    never keeps a half-registered model. A registering process killed outright leaves a version without
    `tracking.COMPLETE_TAG`, which the next registration of the model deletes.
    """
    import importlib

    import mlflow

    model_dir = Path(model_dir)
    model = load_model(model_dir)  # fail before anything is registered if the folder is incomplete
    spec = model_spec(lineage.read_manifest(model_dir)["model"])
    name = name or spec.registered_name
    # the model's pyfunc module: logged as code, with the signature of the requests it answers
    pyfunc_module = importlib.import_module(spec.pyfunc)
    signature = pyfunc_module.signature()
    import chemgen

    del model
    card = model_card(model_dir)
    # what a fresh environment installs: the chemgen wheel carried beside the weights (its metadata brings the
    # dependencies), or for an installed chemgen without sources, the version from the team's index
    wheel = chemgen_wheel()
    artifacts = {"model_dir": str(model_dir)}
    if wheel is not None:
        artifacts["chemgen_wheel"] = str(wheel)
    requirements = [f"artifacts/{wheel.name}" if wheel is not None else f"chemgen=={chemgen.__version__}"]
    with tracking.run(f"register-{name}", nested=tracking.active_run_id() is not None, tags=tags) as run:
        if metrics:
            tracking.log_metrics(metrics)
        mlflow.log_text(card, "model_card.md")   # whole, where the registry's description may hold only its start
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(pyfunc_module.__file__), artifacts=artifacts,
            signature=signature, pip_requirements=requirements, metadata={"model": spec.name, **spec.metadata})
    for model_name, number in tracking.remove_incomplete_versions(name):
        log.warning("removed %s version %s: its registration was killed before it finished", model_name, number)
    version = mlflow.register_model(info.model_uri, name, tags={tracking.WRITER_TAG: tracking.writer_identity()})
    try:
        client = tracking.client()
        # the model card is the version's description, and the registered model's (its newest version's card)
        description = registry_description(card, f"`model_card.md` of MLflow run {run.info.run_id}")
        client.update_model_version(name, version.version, description=description)
        client.update_registered_model(name, description=description)
        tracking.set_alias(name, alias, version.version)
        if metrics:
            tracking.client().set_model_version_tag(name, version.version, "metrics",
                                                    ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        tracking.client().set_model_version_tag(name, version.version, tracking.COMPLETE_TAG, "true")   # last
    except BaseException:
        tracking.client().delete_model_version(name, version.version)
        raise
    return version

"""MLflow tracking and the model registry, on embedded defaults.

Without ``MLFLOW_TRACKING_URI`` everything goes to a SQLite database and an artifact folder
under ``$CHEMGEN_HOME`` (default ``./.chemgen``); set the variable to an MLflow server's URL
(PostgreSQL backend, object-store artifacts in production) and the same code logs there.

Registered models are MLflow pyfuncs (a DataFrame of requests in, a DataFrame of structures
out). Every new version gets the alias ``challenger``; ``champion`` marks the version that
serves and is moved only by `promote` (issue-level gates live in the flows).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chemgen.errors import ChemgenError
from chemgen.paths import chemgen_home

CHALLENGER, CHAMPION = "challenger", "champion"
DEFAULT_EXPERIMENT = "chemgen"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project-local SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = chemgen_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Local artifact folder for the embedded store; a server decides its own."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (chemgen_home() / "mlartifacts").as_uri()


def configure() -> Any:
    """Point MLflow at chemgen's store; returns the mlflow module."""
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)  # the SQLite schema migration is chatty
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    return mlflow


def experiment_id(name: str = DEFAULT_EXPERIMENT) -> str:
    mlflow = configure()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_root())


@contextmanager
def run(name: str, experiment: str = DEFAULT_EXPERIMENT, tags: dict[str, str] | None = None,
        nested: bool = False, parent_run_id: str | None = None) -> Iterator[Any]:
    """An MLflow run on chemgen's store.

    It nests inside this thread's active run, if any; otherwise ``parent_run_id`` (or an ``mlflow.parentRunId``
    tag) attaches it to a run started elsewhere (a Prefect flow's run, seen from a task in another thread or
    process). ``nested`` is kept for callers that say they expect a parent; the active run decides.
    """
    mlflow = configure()
    tags = dict(tags or {})
    if mlflow.active_run() is not None:
        nested = True
        tags.pop("mlflow.parentRunId", None)  # MLflow sets it from the active run
    else:   # no run here (another thread or process started the parent): the tag attaches it, if given
        nested = False
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=name, experiment_id=experiment_id(experiment), tags=tags, nested=nested) as active:
        yield active


def active_run_id() -> str | None:
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active else None


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    # MLflow caps a value at 6,000 characters and rejects re-logging a different value.
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    mlflow.log_metrics({_metric_name(k): float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))}, step=step)


def _metric_name(key: str) -> str:
    # MLflow allows alphanumerics, _ - . / and spaces; scoring keys use "/" already.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def log_dataset_manifest(manifest: dict[str, Any], context: str = "train") -> None:
    """Record a curated dataset version as a run input (name, version, content hash); a manifest with a
    ``source_folder`` (data kept outside the curated store, e.g. the spectra store) names that folder."""
    import mlflow
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow warns that a local path fits two equivalent source classes
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(manifest.get("source_folder")
                                        or str(chemgen_home() / "datasets" / manifest["name"] / manifest["version"]))
    dataset = MetaDataset(source=source, name=f"{manifest['name']}@{manifest['version']}",
                          digest=manifest["content_hash"][:36])
    mlflow.log_input(dataset, context=context)
    mlflow.set_tag(f"dataset.{manifest['name']}", f"{manifest['version']} sha256:{manifest['content_hash'][:16]}")


def lightning_logger(experiment: str = DEFAULT_EXPERIMENT) -> Any:
    """Lightning's MLflow logger writing into the active run (or a new one)."""
    from lightning.pytorch.loggers import MLFlowLogger

    configure()
    return MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri(), run_id=active_run_id(),
                        artifact_location=artifact_root())


# ---------------------------------------------------------------------------- registry
class RegistryError(ChemgenError, LookupError):
    """A registered model, version or alias that is not in the registry, or a move the registry cannot make."""


# What MLflow answers for a name, version or alias that is not there (an unknown alias and a version that is
# not a number are INVALID_PARAMETER_VALUE). Anything else (a server that does not answer) is not "absent".
_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def client() -> Any:
    from mlflow import MlflowClient

    configure()
    return MlflowClient()


def set_alias(name: str, alias: str, version: str | int) -> None:
    client().set_registered_model_alias(name, alias, str(version))


# A registration is several calls to the registry (the version, its description, alias and tags). The version is
# created with the registering process's identity and gets COMPLETE_TAG last, so a version whose writer was killed
# in between (SIGKILL, a lost machine: no `except` runs) is recognisable and is removed by the next registration or
# `chemgen services up`, instead of lingering half-registered.
WRITER_TAG, COMPLETE_TAG = "chemgen.writer", "chemgen.complete"


def writer_identity() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _writer_gone(writer: str) -> bool:
    """Whether the process ``host:pid`` is known to be dead: only a process of this host can be checked."""
    import os
    import socket

    host, _, pid = writer.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def incomplete_versions(name: str | None = None, registry: Any = None) -> list[Any]:
    """Versions (of ``name``, or of every model) whose registration never finished and whose writer is dead.
    Versions from before the marker (no writer tag) and registrations still under way are not among them.
    ``registry``: an `MlflowClient` of another server than this process's."""
    query = f"name='{name}'" if name else ""
    return [v for v in (registry or client()).search_model_versions(query)
            if COMPLETE_TAG not in v.tags and v.tags.get(WRITER_TAG) and _writer_gone(v.tags[WRITER_TAG])]


def remove_incomplete_versions(name: str | None = None, registry: Any = None) -> list[tuple[str, str]]:
    """Delete the half-registered versions `incomplete_versions` finds; returns (model, version) of each."""
    registry = registry or client()
    removed = []
    for version in incomplete_versions(name, registry):
        registry.delete_model_version(version.name, version.version)
        removed.append((version.name, str(version.version)))
    return removed


def require_model(name: str) -> None:
    """Raise `RegistryError` unless ``name`` is a registered model (the message lists the ones there are)."""
    from mlflow.exceptions import MlflowException

    try:
        client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code not in _ABSENT:
            raise
        known = sorted(m.name for m in client().search_registered_models(max_results=50))
        raise RegistryError(f"no registered model {name!r} (registered: {', '.join(known) or 'none'})") from None


def model_version(name: str, version: str | int) -> Any:
    """A registered version; `RegistryError` naming the model's versions when it is not there."""
    from mlflow.exceptions import MlflowException

    require_model(name)
    try:
        return client().get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code not in _ABSENT:
            raise
        found = sorted(int(v.version) for v in client().search_model_versions(f"name='{name}'"))
        raise RegistryError(f"{name} has no version {version!r} (versions: "
                            f"{', '.join(map(str, found)) or 'none'})") from None


def version_by_alias(name: str, alias: str) -> Any | None:
    """The version holding ``alias``; None when the model or the alias does not exist. Any other failure (an
    unreachable server) raises: the gate reads None as "no champion yet" and would promote."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code not in _ABSENT:
            raise
        return None


_UNSET = object()


@contextmanager
def promotion_lock(name: str):
    """One promotion of ``name`` at a time on this host (a file lock under ``$CHEMGEN_HOME/locks``, which the
    workers of one installation share): reading the champion and moving it happen together."""
    import fcntl

    folder = chemgen_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"promote-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(name: str, version: str | int, expected: Any = _UNSET) -> bool:
    """Make ``version`` the champion (the version downstream teams load), remembering the one it replaces.

    ``expected``: the champion's version the caller decided against (None: there was none). The alias moves only
    if it still points there, checked and moved under `promotion_lock`: of two runs that beat the same champion at
    the same time, one promotes and the other finds the champion moved. Returns whether the alias moved."""
    model_version(name, version)  # an unknown model or version is the caller's mistake, said as such
    with promotion_lock(name):
        current = version_by_alias(name, CHAMPION)
        found = None if current is None else str(current.version)
        if expected is not _UNSET and found != (None if expected is None else str(expected)):
            return False
        if current is not None and found != str(version):
            client().set_model_version_tag(name, str(version), "previous_champion", found)
        set_alias(name, CHAMPION, version)
    return True


def rollback(name: str) -> str:
    """Give ``champion`` back to the version the current champion replaced; returns that version."""
    require_model(name)
    current = version_by_alias(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back")
    previous = current.tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"{name} version {current.version} replaced no earlier champion; nothing to roll back to")
    set_alias(name, CHAMPION, previous)
    return previous


def model_uri(name: str, alias: str = CHAMPION) -> str:
    return f"models:/{name}@{alias}"

"""Nightly retraining: curate -> train -> sample and score (challenger and champion) -> register -> gate.

The challenger continues the registry's champion (or, before there is one, the checkpoint that ships
with chemgen, registered first as the champion) on the freshly curated data; profiles that train
from scratch start from random weights. Champion and challenger are sampled from the same seeds
and scored in the same run, and the new version is promoted to ``champion`` only if it beats the
champion on the model's gate metrics (`chemgen.gates`: one-sided 95 % bounds, same context).
A failed task is retried; a flow that still fails registers nothing. The whole flow is one MLflow
run (tagged with the Prefect flow run id) with the training, sampling and registration runs as its
children. Tasks are model-agnostic: they name a model of `chemgen.generation.protocol.MODELS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run

from chemgen import gates, tracking
from chemgen.errors import UsageError
from chemgen.paths import chemgen_home
from chemgen.scoring import SCORING_VERSION
from workflows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

RETRIES = 1


@dataclass(frozen=True)
class Profile:
    """How much data, training and sampling one retraining run uses."""

    config: str
    qm9_rows: int | None
    mp20_rows: int | None                      # rows per MP-20 source file
    minutes: dict[str, float] | None           # training minutes per stage (a stage not named is not trained)
    steps: dict[str, int] | None               # optimiser steps per stage (with minutes: whichever ends first)
    samples: int                               # per dataset, for champion and challenger alike
    sample_steps: int | None                   # ODE steps (None: the config's)
    init: str | None = "champion"              # "champion": continue the champion (or the shipped model); None: scratch
    model: str = "adit"
    datasets: tuple[str, ...] = field(default=("qm9", "mp20"))


PROFILES = {
    # A few minutes on 2 CPU cores: fine-tune the shipped model's DiT on small slices, then let the gate decide.
    "demo": Profile("gpu-quick", qm9_rows=2_000, mp20_rows=300, minutes={"dit": 1.5}, steps=None, samples=200,
                    sample_steps=50),
    # The nightly job: full data, the champion's DiT trained on for two CPU hours (its VAE trains on GPU leases).
    "nightly": Profile("gpu-quick", qm9_rows=None, mp20_rows=None, minutes={"dit": 120.0}, steps=None, samples=1000,
                       sample_steps=None),
}


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``fail_at`` to exercise retries and clean failure."""


def _maybe_fail(step: str, fail_at: str | None) -> None:
    if fail_at == step:
        raise InjectedFailure(f"injected failure in task {step!r}")


# ---------------------------------------------------------------------------- tasks
@task(name="curate-dataset", retries=RETRIES, retry_delay_seconds=1)
def curate_dataset(name: str, limit: int | None, data_dir: str | None = None) -> dict[str, Any]:
    """Curate one dataset; unchanged input (same content hashes) reuses the stored version."""
    from chemgen.data import BUILDERS
    from chemgen.data.store import curate

    kwargs: dict[str, Any] = {"limit": limit}
    if name != "qm9":
        kwargs["data_dir"] = data_dir
    result = curate(BUILDERS[name](**kwargs), progress=False)
    m = result.manifest
    return {"name": name, "version": result.version, "content_hash": m["content_hash"], "reused": result.reused,
            "splits": m["splits"], "bad": m["counts"]["bad"]}


@task(name="resolve-champion", retries=0)
def resolve_champion(model: str, config: str, name: str, tags: dict[str, str]) -> dict[str, Any]:
    """The champion (its version and a pinned URI) and the checkpoint a challenger continues: the champion's
    own lineage when it is one of this model and config, else the checkpoint that ships with chemgen. Before
    there is a champion, the shipped checkpoint is registered as the first one (tag ``shipped``)."""
    from chemgen.generation.jobs import register, registered_lineage
    from chemgen.generation.runs import shipped_model

    champion = tracking.version_by_alias(name, tracking.CHAMPION)
    if champion is None:
        version = register(shipped_model(model), name, alias=tracking.CHAMPION, tags=tags)
        tracking.client().set_model_version_tag(name, version.version, "shipped", "true")
        champion = tracking.version_by_alias(name, tracking.CHAMPION)
    uri = f"models:/{name}/{champion.version}"
    local = registered_lineage(uri)
    init = next((str(folder) for folder in (local, _shipped_or_none(model)) if _continues(folder, model, config)),
                None)
    return {"version": str(champion.version), "uri": uri, "model_dir": str(local) if local else None, "init": init}


def _shipped_or_none(model: str) -> Any:
    from chemgen.generation.runs import shipped_model

    try:
        return shipped_model(model)
    except FileNotFoundError:
        return None


def _continues(folder: Any, model: str, config: str) -> bool:
    """Whether a challenger of ``model``/``config`` can continue this checkpoint (a lineage of the same config)."""
    from chemgen.config import load_config
    from chemgen.generation import lineage

    if folder is None or not lineage.is_lineage(folder):
        return False
    manifest = lineage.read_manifest(folder)
    return manifest.get("model") == model and manifest["config"]["name"] == load_config(config, model).name


@task(name="train", retries=RETRIES, retry_delay_seconds=1)
def train_model(model: str, config: str, out_dir: str, init: str | None, minutes: dict[str, float] | None,
                steps: dict[str, int] | None, versions: dict[str, str], tags: dict[str, str],
                fail_at: str | None = None) -> dict[str, Any]:
    """Every stage of the model; a retry resumes the run folder (finished stages are kept)."""
    from chemgen.generation.jobs import train

    _maybe_fail("train", fail_at)
    outcome = train(model, config, out_dir, init=init, minutes=minutes, steps=steps, versions=versions,
                    progress=False, tags=tags, device="cpu")
    return {"model_dir": str(outcome.model_dir), "run_id": outcome.run_id, "steps": outcome.steps,
            "seconds": outcome.seconds}


@task(name="sample-and-score", retries=RETRIES, retry_delay_seconds=1)
def sample_and_score(model_dir: str, dataset: str, n: int, num_steps: int | None, out_dir: str,
                     versions: dict[str, str], tags: dict[str, str], role: str = "challenger",
                     fail_at: str | None = None) -> dict[str, float]:
    from chemgen.dense import resolve_dataset
    from chemgen.generation.jobs import load_model, sample_to_files

    dataset, kind = resolve_dataset(dataset)
    _maybe_fail(f"sample-{kind}", fail_at)
    with tracking.run(f"sample-{dataset}-{role}", tags={**tags, "role": role},
                      parent_run_id=tags.get("mlflow.parentRunId")):
        result = sample_to_files(load_model(model_dir), dataset, n, out_dir, seed=0, num_steps=num_steps,
                                 versions=versions)
        tracking.log_metrics({"samples_per_second": result["samples_per_second"]})
    return {f"{kind}/{k}": v for k, v in result["metrics"].items()}


@task(name="register-and-gate", retries=0)
def register_and_gate(model_dir: str, name: str, metrics: dict[str, float], champion_metrics: dict[str, float] | None,
                      samples: int, context: dict[str, str], tags: dict[str, str],
                      fail_at: str | None = None, champion_version: str | None = None) -> dict[str, Any]:
    """Register (challenger), then let the gate decide on champion against the champion's scores from this same
    run (same seeds, same context). Not retried: never register twice."""
    from chemgen.generation.jobs import register

    _maybe_fail("register", fail_at)
    version = register(model_dir, name, metrics=metrics, tags=tags)
    champion = None if champion_metrics is None else gates.Evaluation(champion_metrics, samples, context)
    decision = gates.evaluate_and_promote(name, version.version, gates.Evaluation(metrics, samples, context),
                                          champion_evaluation=champion, champion_version=champion_version)
    return {"name": name, "version": version.version, "promoted": decision.promote, "reason": decision.reason,
            "gate": decision.challenger, "champion_before": decision.champion}


def registered_name(profile: str, model: str = "adit") -> str:
    """The model's registry name (``chemgen-adit``) for the nightly profile; ``<name>-<profile>`` otherwise, so
    that a demo run against a team's MLflow server can never crown a demo model under the production name."""
    from chemgen.generation.protocol import model_spec

    name = model_spec(model).registered_name
    return name if profile == "nightly" else f"{name}-{profile}"


# ---------------------------------------------------------------------------- the flow
@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain(profile: str = "demo", model_name: str | None = None, data_dir: str | None = None,
                    fail_at: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain a model on freshly curated data and register it; see the module docstring.

    ``overrides`` changes fields of the profile (e.g. ``{"steps": {"dit": 5}, "init": None}``); ``fail_at``
    injects a failure into one task (``train``, ``sample-molecule``, ``sample-crystal``, ``register``)
    to exercise retries.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    plan = replace(PROFILES[profile], **(overrides or {}))
    model_name = model_name or registered_name(profile, plan.model)
    start = time.perf_counter()
    run_dir = chemgen_home() / "runs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}"
    with tracking.run("nightly-retrain", tags={"prefect.flow_run_id": str(flow_run.id), "profile": profile,
                                               "model": plan.model}) as run:
        tracking.log_params({f"profile.{k}": v for k, v in vars(plan).items()})
        tags = {"mlflow.parentRunId": run.info.run_id, "prefect.flow_run_id": str(flow_run.id)}
        datasets = [curate_dataset(name, limit, data_dir) for name, limit in
                    (("qm9", plan.qm9_rows), ("mp20", plan.mp20_rows))]
        # The exact versions curated here travel to training and scoring (a slice never becomes LATEST).
        versions = {d["name"]: d["version"] for d in datasets}
        for d in datasets:
            from chemgen.data.store import read_manifest

            tracking.log_dataset_manifest(read_manifest(d["name"], d["version"]))
        champion = resolve_champion(plan.model, plan.config, model_name, tags) if plan.init == "champion" else None
        trained = train_model(plan.model, plan.config, str(run_dir / "train"), champion["init"] if champion else None,
                              plan.minutes, plan.steps, versions, tags, fail_at)
        metrics: dict[str, float] = {}
        champion_metrics: dict[str, float] | None = None
        for dataset in plan.datasets:
            metrics.update(sample_and_score(trained["model_dir"], dataset, plan.samples, plan.sample_steps,
                                            str(run_dir / f"samples-{dataset}"), versions, tags, "challenger",
                                            fail_at))
        if champion is None:
            existing = tracking.version_by_alias(model_name, tracking.CHAMPION)
            if existing is not None:  # a scratch profile with a champion already: score it here too
                champion = {"version": str(existing.version), "uri": f"models:/{model_name}/{existing.version}"}
        if champion is not None:
            champion_metrics = {}
            for dataset in plan.datasets:
                # the downloaded lineage when there is one (no second registry load), else the pinned URI
                champion_metrics.update(sample_and_score(champion.get("model_dir") or champion["uri"], dataset,
                                                         plan.samples, plan.sample_steps,
                                                         str(run_dir / f"champion-{dataset}"), versions, tags,
                                                         "champion"))
        tracking.log_metrics(metrics)
        if champion_metrics:
            tracking.log_metrics({f"champion/{k}": v for k, v in champion_metrics.items()})
        # Versions are compared only within one evaluation context (gates.py): both were scored just now.
        context = {"profile": profile, "config": plan.config, "samples": str(plan.samples),
                   "sample_steps": str(plan.sample_steps), "seed": "0",
                   "datasets": ",".join(f"{d['name']}@{d['version']}" for d in datasets),
                   "scoring": SCORING_VERSION}
        registration = register_and_gate(trained["model_dir"], model_name, metrics, champion_metrics, plan.samples,
                                         context, tags, fail_at, champion["version"] if champion else None)
        tracking.log_metrics({"flow_seconds": time.perf_counter() - start})
        return {"datasets": datasets, "metrics": metrics, "champion_metrics": champion_metrics,
                "champion": champion, "registration": registration, "run_dir": str(run_dir),
                "mlflow_run_id": run.info.run_id, "seconds": time.perf_counter() - start, "train": trained,
                "model": plan.model}

"""Nightly retraining: curate -> train -> sample -> score -> register (challenger) -> gate (champion).

A failed task is retried; a flow that still fails registers nothing. A new version is
promoted to ``champion`` only if it beats the champion on the model's gate metrics
(`chemgen.gates`); the first version becomes champion. The whole flow is one MLflow run
(tagged with the Prefect flow run id) with the training, sampling and registration runs
as its children.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workflows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow, task
from prefect.runtime import flow_run

from chemgen import gates, tracking
from chemgen.paths import chemgen_home

RETRIES = 1


@dataclass(frozen=True)
class Profile:
    """How much data, training and sampling one retraining run uses."""

    config: str
    qm9_rows: int | None
    mp20_rows: int | None      # rows per MP-20 source file
    vae_steps: int | None
    dit_steps: int | None
    samples: int               # per kind
    sample_steps: int | None   # ODE steps (None: the config's)


PROFILES = {
    # Minutes on 2 CPU cores: small slices and the tiny config. Shows the pipeline, not a good model.
    "demo": Profile("tiny", qm9_rows=2_000, mp20_rows=300, vae_steps=300, dit_steps=300, samples=200, sample_steps=50),
    # The nightly job: full data, the cpu config, the config's step budgets.
    "nightly": Profile("cpu", qm9_rows=None, mp20_rows=None, vae_steps=None, dit_steps=None, samples=1000,
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


@task(name="train-stage", retries=RETRIES, retry_delay_seconds=1)
def train_stage(stage: str, config: str, out_dir: str, vae_path: str | None, max_steps: int | None,
                versions: dict[str, str], tags: dict[str, str], fail_at: str | None = None) -> dict[str, Any]:
    import logging

    from chemgen.models.adit.workflow import train

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the flow's log readable
    _maybe_fail(f"train-{stage}", fail_at)
    outcome = train(stage, config, out_dir, vae_path=vae_path, accelerator="cpu", max_steps=max_steps,
                    resume=False, progress=False, tags=tags, versions=versions)
    export = Path(out_dir) / ("vae.pt" if stage == "vae" else "dit.pt")
    return {"export": str(export), "run_id": outcome.run_id, "steps": outcome.steps, "seconds": outcome.seconds}


@task(name="sample-and-score", retries=RETRIES, retry_delay_seconds=1)
def sample_and_score(model_dir: str, kind: str, n: int, num_steps: int | None, out_dir: str,
                     versions: dict[str, str], tags: dict[str, str], fail_at: str | None = None) -> dict[str, float]:
    from chemgen.models.adit.workflow import load_model, sample_to_files

    _maybe_fail(f"sample-{kind}", fail_at)
    with tracking.run(f"sample-{kind}", tags=tags, parent_run_id=tags.get("mlflow.parentRunId")):
        result = sample_to_files(load_model(model_dir), kind, n, out_dir, seed=0, num_steps=num_steps,
                                 versions=versions)
        tracking.log_metrics({"samples_per_second": result["samples_per_second"]})
    return {f"{kind}/{k}": v for k, v in result["metrics"].items()}


@task(name="register-and-gate", retries=0)
def register_and_gate(model_dir: str, name: str, metrics: dict[str, float], samples: int, context: dict[str, str],
                      tags: dict[str, str], fail_at: str | None = None) -> dict[str, Any]:
    """Register (challenger), then let the gate decide on champion. Not retried: never register twice."""
    from chemgen.models.adit.workflow import register

    _maybe_fail("register", fail_at)
    version = register(model_dir, name, metrics=metrics, tags=tags)
    decision = gates.evaluate_and_promote(name, version.version, gates.Evaluation(metrics, samples, context))
    return {"name": name, "version": version.version, "promoted": decision.promote, "reason": decision.reason,
            "gate": decision.challenger, "champion_before": decision.champion}


def registered_name(profile: str) -> str:
    """``chemgen-adit`` for the nightly profile; ``chemgen-adit-<profile>`` otherwise, so that a demo run
    against a team's MLflow server can never crown a tiny model under the production name."""
    return "chemgen-adit" if profile == "nightly" else f"chemgen-adit-{profile}"


# ---------------------------------------------------------------------------- the flow
@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain(profile: str = "demo", model_name: str | None = None, data_dir: str | None = None,
                    fail_at: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain ADiT on freshly curated data and register it; see the module docstring.

    ``overrides`` changes fields of the profile (e.g. ``{"dit_steps": 5}``); ``fail_at`` injects
    a failure into one task (``train-vae``, ``train-dit``, ``sample-molecule``, ``sample-crystal``,
    ``register``) to exercise retries.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    plan = replace(PROFILES[profile], **(overrides or {}))
    model_name = model_name or registered_name(profile)
    start = time.perf_counter()
    run_dir = chemgen_home() / "runs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}"
    with tracking.run("nightly-retrain", tags={"prefect.flow_run_id": str(flow_run.id), "profile": profile}) as run:
        tracking.log_params({f"profile.{k}": v for k, v in vars(plan).items()})
        tags = {"mlflow.parentRunId": run.info.run_id, "prefect.flow_run_id": str(flow_run.id)}
        datasets = [curate_dataset(name, limit, data_dir) for name, limit in
                    (("qm9", plan.qm9_rows), ("mp20", plan.mp20_rows))]
        # The exact versions curated here travel to training and scoring (a slice never becomes LATEST).
        versions = {d["name"]: d["version"] for d in datasets}
        for d in datasets:
            from chemgen.data.store import read_manifest

            tracking.log_dataset_manifest(read_manifest(d["name"], d["version"]))
        vae = train_stage("vae", plan.config, str(run_dir / "vae"), None, plan.vae_steps, versions, tags, fail_at)
        dit = train_stage("dit", plan.config, str(run_dir / "model"), vae["export"], plan.dit_steps, versions, tags,
                          fail_at)
        model_dir = str(run_dir / "model")
        metrics: dict[str, float] = {}
        for kind in ("molecule", "crystal"):
            metrics.update(sample_and_score(model_dir, kind, plan.samples, plan.sample_steps,
                                            str(run_dir / f"samples-{kind}"), versions, tags, fail_at))
        tracking.log_metrics(metrics)
        # Versions are compared only within one evaluation context (gates.py).
        context = {"profile": profile, "config": plan.config, "samples": str(plan.samples),
                   "sample_steps": str(plan.sample_steps), "seed": "0",
                   "datasets": ",".join(f"{d['name']}@{d['version']}" for d in datasets)}
        registration = register_and_gate(model_dir, model_name, metrics, plan.samples, context, tags, fail_at)
        tracking.log_metrics({"flow_seconds": time.perf_counter() - start})
        return {"datasets": datasets, "metrics": metrics, "registration": registration, "run_dir": str(run_dir),
                "mlflow_run_id": run.info.run_id, "seconds": time.perf_counter() - start,
                "train": {"vae": vae, "dit": dit}}

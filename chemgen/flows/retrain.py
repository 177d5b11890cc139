"""Nightly retraining: curate once -> one branch per model: train -> sample and score (challenger and champion)
-> register -> gate.

One flow run curates the datasets every model needs, once, then runs a branch for each model of the
profile (ADiT, GFMDiff, DiffSpectra), each under its own registered name (``chemgen-adit``, ``chemgen-gfmdiff``,
``chemgen-diffspectra``; with ``-<profile>`` outside ``nightly``) and its own gate (`chemgen.gates.GATES`).
DiffSpectra trains on the spectra store (``qm9-xtb``, computed in the background, not curated here) and is
scored by the elucidation benchmark (`chemgen.elucidation.benchmark.run_benchmark`: IR + Raman queries of
held-out test molecules) instead of unconditional samples. A branch's challenger continues
the registry's champion (or, before there is one, the lineage that ships with chemgen, registered first as
the champion) on the freshly curated data; plans that train from scratch start from random weights. A
model with neither a champion nor a shipped lineage is skipped, with the reason in the result, rather than
trained from scratch unasked. Champion and challenger are sampled from the same seeds and scored in the same
run, and the new version is promoted to ``champion`` only if it beats the champion on the model's gate
metrics (one-sided 95 % bounds, same context).

A failed task is retried; a branch whose task still fails registers nothing and is reported in the flow's
result (model, task, error), while the other branches go on and register and gate as usual; the flow run
then ends Failed. The whole flow is one MLflow run (tagged with the Prefect flow run id), each branch a
child run, with the training, sampling and registration runs as the branch's children. Tasks are
model-agnostic: they name a model of `chemgen.models.specs.MODELS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from prefect import flow, task
from prefect.runtime import flow_run
from prefect.states import Failed

from chemgen import gates, tracking
from chemgen.errors import ChemgenError, UsageError
from chemgen.paths import chemgen_home
from chemgen.flows.events import RunEvents
from chemgen.scoring import SCORING_VERSION
from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

RETRIES = 1
SPECTRA_DATASET = "qm9-xtb"   # DiffSpectra's data: the spectra store, versioned by its content hash


@dataclass(frozen=True)
class Plan:
    """How one model is trained, sampled and scored in a profile (its branch of the flow)."""

    config: str
    minutes: dict[str, float] | None           # training minutes per stage (a stage not named is not trained)
    steps: dict[str, int] | None               # optimiser steps per stage (with minutes: whichever ends first)
    samples: int                               # per dataset, for champion and challenger alike
    sample_steps: int | None                   # sampling steps (None: the config's)
    datasets: tuple[str, ...]                  # what the branch samples and scores (and the flow curates)
    init: str | None = "champion"              # "champion": continue the champion (or the shipped model); None: scratch
    queries: int = 0                           # elucidation benchmark queries (DiffSpectra; samples: candidates each)
    limit: int | None = None                   # training molecules per dataset (None: the config's)


@dataclass(frozen=True)
class Profile:
    """How much data one retraining run curates, and each model's plan (one branch per model, in this order)."""

    qm9_rows: int | None
    mp20_rows: int | None                      # rows per MP-20 source file
    plans: dict[str, Plan]


PROFILES = {
    # Under 3 minutes on 2 CPU cores with the branches side by side (`chemgen run`): fine-tune each shipped model for
    # 15 s on small slices, score champion and challenger on the same few samples, and let each gate decide. The
    # samples are too few for the gate to promote on anything but a large difference: the demo shows the path.
    "demo": Profile(qm9_rows=1_000, mp20_rows=200, plans={
        # ADiT samples at about 0.7 s per step for a batch of 48 on one core: 32 samples x 16 steps per dataset
        "adit": Plan("gpu-quick", minutes={"dit": 0.25}, steps=None, samples=32, sample_steps=16,
                     datasets=("qm9", "mp20")),
        # GFMDiff samples at about 0.07 s per molecule and step on one core: 16 molecules x 10 steps
        "gfmdiff": Plan("cpu", minutes={"denoiser": 0.25}, steps=None, samples=16, sample_steps=10,
                        datasets=("qm9",)),
        # 200 molecules of the spectra store (their graphs are perceived on each new store version, 30 ms each);
        # 4 test queries x 4 candidates at 10 of the 1,000 steps: the flow's plumbing, not the paper's protocol
        "diffspectra": Plan("cpu", minutes={"denoiser": 0.25}, steps=None, samples=4, sample_steps=10,
                            datasets=(SPECTRA_DATASET,), queries=4, limit=200)}),
    # The nightly job: full data; the champions trained on for two CPU hours (ADiT's VAE trains on GPUs).
    "nightly": Profile(qm9_rows=None, mp20_rows=None, plans={
        "adit": Plan("gpu-quick", minutes={"dit": 120.0}, steps=None, samples=1000, sample_steps=None,
                     datasets=("qm9", "mp20")),
        # EDM's T = 500 for 1,000 molecules is about 10 core-hours on a CPU: the nightly gate compares champion and
        # challenger at 100 steps on 500 molecules (both alike); the paper's protocol runs on GPUs
        "gfmdiff": Plan("cpu", minutes={"denoiser": 120.0}, steps=None, samples=500, sample_steps=100,
                        datasets=("qm9",)),
        # 100 test queries x 10 candidates at 100 steps is about 30 minutes per model on one core; the paper's
        # 1,000 steps on every test molecule runs on GPUs (models/gpu/diffspectra-ablation.sh)
        "diffspectra": Plan("cpu", minutes={"denoiser": 120.0}, steps=None, samples=10, sample_steps=100,
                            datasets=(SPECTRA_DATASET,), queries=100)}),
}
DATASET_ORDER = ("qm9", "mp20")   # the datasets a profile curates (those its plans sample), in this order


class InjectedFailure(RuntimeError):
    """Raised on purpose by ``fail_at`` to exercise retries and clean failure."""


class BranchFailed(ChemgenError):
    """One or more model branches failed; ``result`` is the flow's result (every branch's outcome)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message, result)   # both in args, so that the exception pickles with its result

    @property
    def result(self) -> dict[str, Any]:
        return self.args[1]

    def __str__(self) -> str:
        return str(self.args[0])


def _maybe_fail(step: str, fail_at: str | None) -> None:
    if fail_at == step:
        raise InjectedFailure(f"injected failure in task {step!r}")


def _fail_at_for(model: str, fail_at: str | None) -> str | None:
    """The step ``fail_at`` injects a failure into in ``model``'s branch: ``"gfmdiff:register"`` targets that
    model's branch only, ``"register"`` every branch."""
    if fail_at is None or ":" not in fail_at:
        return fail_at
    target, step = fail_at.split(":", 1)
    return step if target == model else None


# ---------------------------------------------------------------------------- tasks
@task(name="curate-dataset", retries=RETRIES, retry_delay_seconds=1)
def curate_dataset(name: str, limit: int | None, data_dir: str | None = None) -> dict[str, Any]:
    """Curate one dataset; unchanged input (same content hashes) reuses the stored version."""
    from chemgen.datasets import curation_recipe
    from chemgen.data.store import curate

    kwargs: dict[str, Any] = {"limit": limit}
    if name != "qm9":
        kwargs["data_dir"] = data_dir
    result = curate(curation_recipe(name, **kwargs), progress=False)
    m = result.manifest
    return {"name": name, "version": result.version, "content_hash": m["content_hash"], "reused": result.reused,
            "splits": m["splits"], "bad": m["counts"]["bad"]}


@task(name="resolve-champion", retries=0)
def resolve_champion(model: str, config: str, name: str, tags: dict[str, str]) -> dict[str, Any] | None:
    """The champion (its version and a pinned URI) and the checkpoint a challenger continues (``init``: the
    champion's own lineage when it is one of this model and config, else the checkpoint that ships with
    chemgen, else None). Before there is a champion, the shipped checkpoint is registered as the first one
    (tag ``shipped``); None when there is neither a champion nor a shipped checkpoint."""
    from chemgen.models.loading import registered_lineage
    from chemgen.models.specs import load_config
    from chemgen.registry.register import register
    from chemgen.training.continuation import lineage_to_continue

    champion = tracking.version_by_alias(name, tracking.CHAMPION)
    if champion is None:
        shipped = _shipped_or_none(model)
        if shipped is None:
            return None
        version = register(shipped, name, alias=tracking.CHAMPION, tags=tags)
        tracking.client().set_model_version_tag(name, version.version, "shipped", "true")
        champion = tracking.version_by_alias(name, tracking.CHAMPION)
    uri = f"models:/{name}/{champion.version}"
    local = registered_lineage(uri)
    init = lineage_to_continue(model, load_config(config, model).name, candidates=[local])
    return {"version": str(champion.version), "uri": uri, "model_dir": str(local) if local else None,
            "init": str(init) if init else None}


def _shipped_or_none(model: str) -> Any:
    from chemgen.models.loading import shipped_model

    try:
        return shipped_model(model)
    except FileNotFoundError:
        return None


@task(name="train", retries=RETRIES, retry_delay_seconds=1)
def train_model(model: str, config: str, out_dir: str, init: str | None, minutes: dict[str, float] | None,
                steps: dict[str, int] | None, versions: dict[str, str], tags: dict[str, str],
                fail_at: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Every stage of the model; a retry resumes the run folder (finished stages are kept). ``limit`` trains on
    the first molecules of each dataset only (the config keeps its name, so lineages still continue)."""
    import dataclasses

    from chemgen.models.specs import load_config
    from chemgen.training.tracked import train

    _maybe_fail("train", fail_at)
    loaded = load_config(config, model)
    if limit is not None:
        loaded = dataclasses.replace(loaded, data=dataclasses.replace(loaded.data, limit_per_dataset=limit))
    outcome = train(model, loaded, out_dir, init=init, minutes=minutes, steps=steps, versions=versions,
                    progress=False, tags=tags, device="cpu")
    return {"model_dir": str(outcome.model_dir), "run_id": outcome.run_id, "steps": outcome.steps,
            "seconds": outcome.seconds}


@task(name="sample-and-score", retries=RETRIES, retry_delay_seconds=1)
def sample_and_score(model_dir: str, dataset: str, n: int, num_steps: int | None, out_dir: str,
                     versions: dict[str, str], tags: dict[str, str], role: str = "challenger",
                     fail_at: str | None = None) -> dict[str, float]:
    from chemgen.datasets import resolve_dataset
    from chemgen.models.loading import load_model
    from chemgen.sampling.generate import sample_to_files

    dataset, kind = resolve_dataset(dataset)
    _maybe_fail(f"sample-{kind}", fail_at)
    with tracking.run(f"sample-{dataset}-{role}", tags={**tags, "role": role},
                      parent_run_id=tags.get("mlflow.parentRunId")):
        result = sample_to_files(load_model(model_dir), dataset, n, out_dir, seed=0, num_steps=num_steps,
                                 versions=versions)
        tracking.log_metrics({"samples_per_second": result["samples_per_second"]})
    return {f"{kind}/{k}": v for k, v in result["metrics"].items()}


@task(name="elucidate-and-score", retries=RETRIES, retry_delay_seconds=1)
def elucidate_and_score(model_dir: str, queries: int, n: int, num_steps: int | None, out_dir: str,
                        tags: dict[str, str], role: str = "challenger", fail_at: str | None = None) -> dict[str, float]:
    """DiffSpectra's evaluation: the elucidation benchmark on ``queries`` test molecules, ``n`` candidates each."""
    from chemgen.elucidation.benchmark import run_benchmark
    from chemgen.models.loading import load_model

    _maybe_fail("sample-elucidation", fail_at)
    with tracking.run(f"elucidate-{role}", tags={**tags, "role": role}, parent_run_id=tags.get("mlflow.parentRunId")):
        start = time.perf_counter()
        metrics = run_benchmark(load_model(model_dir), queries, n, num_steps, out_dir)
        tracking.log_metrics({**metrics, "benchmark_seconds": time.perf_counter() - start})
    return metrics


def _evaluate(model_dir: str, dataset: str, plan: Plan, out_dir: str, versions: dict[str, str],
              tags: dict[str, str], role: str, fail_at: str | None = None) -> dict[str, float]:
    """Score one model on one of the plan's datasets: unconditional samples, or DiffSpectra's benchmark."""
    if dataset == SPECTRA_DATASET:
        return _run(elucidate_and_score, model_dir, plan.queries, plan.samples, plan.sample_steps, out_dir, tags,
                    role, fail_at)
    return _run(sample_and_score, model_dir, dataset, plan.samples, plan.sample_steps, out_dir, versions, tags,
                role, fail_at)


def spectra_store_version() -> str:
    """The spectra store's version as DiffSpectra's training records it (its content hash, 12 digits)."""
    from chemgen.spectra.curation import default_folder
    from chemgen.models.diffspectra.packs import store_version

    return store_version(default_folder())[0]


@task(name="register-and-gate", retries=0)
def register_and_gate(model_dir: str, name: str, metrics: dict[str, float], champion_metrics: dict[str, float] | None,
                      samples: int, context: dict[str, str], tags: dict[str, str],
                      fail_at: str | None = None, champion_version: str | None = None) -> dict[str, Any]:
    """Register (challenger), then let the gate decide on champion against the champion's scores from this same
    run (same seeds, same context). Not retried: never register twice."""
    from chemgen.registry.register import register

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
    from chemgen.models.specs import model_spec

    name = model_spec(model).registered_name
    return name if profile == "nightly" else f"{name}-{profile}"


# ---------------------------------------------------------------------------- the flow
class _TaskFailed(Exception):
    def __init__(self, task_name: str, error: BaseException) -> None:
        super().__init__(task_name, error)
        self.task_name, self.error = task_name, error


def _run(task_: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a task; a failed task (after its retries) becomes `_TaskFailed`, naming the task, for its branch."""
    state = task_(*args, return_state=True, **kwargs)
    if not state.is_completed():
        raise _TaskFailed(task_.name, state.result(raise_on_failure=False))
    return state.result()


def _branch(model: str, plan: Plan, name: str, profile: str, versions: dict[str, str], run_dir: Any,
            tags: dict[str, str], fail_at: str | None, events: str | None = None) -> dict[str, Any]:
    """One model's branch: resolve the champion -> train -> sample and score both -> register and gate, saying
    what it does to ``events`` (`chemgen.flows.events`).

    Returns its outcome (``status``: registered, skipped or failed, with ``task`` and ``error``); never raises
    for a failed task, so that the flow goes on with the other branches."""
    start = time.perf_counter()
    say = RunEvents(events).say
    outcome: dict[str, Any] = {"model": model, "name": name, "config": plan.config, "status": "running"}
    try:
        with tracking.run(f"retrain-{model}", tags={**tags, "model": model, "registered_name": name},
                          nested=True) as run:
            outcome["mlflow_run_id"] = run.info.run_id
            tracking.log_params({f"plan.{k}": v for k, v in vars(plan).items()})
            tags = {**tags, "mlflow.parentRunId": run.info.run_id, "model": model}
            champion = None
            if plan.init == "champion":
                say(model, f"resolving the champion of {name}")
                champion = _run(resolve_champion, model, plan.config, name, tags)
                reason = _no_init_reason(model, plan.config, name, profile, champion)
                if reason:   # never train from scratch when the plan says to continue the champion
                    tracking.log_params({"skipped": reason[:500]})
                    outcome.update(status="skipped", reason=reason, champion=champion)
                    say(model, f"skipped: {reason}")
                    return outcome
                say(model, f"champion: version {champion['version']}")
            outcome["champion"] = champion
            if SPECTRA_DATASET in plan.datasets:   # not curated by the flow: the store as it is on disk now
                versions = {**versions, SPECTRA_DATASET: spectra_store_version()}
            budget = ", ".join([f"{k} {v:g} min" for k, v in (plan.minutes or {}).items()]
                               + [f"{k} {v} steps" for k, v in (plan.steps or {}).items()])
            say(model, f"training a challenger ({budget}) from "
                       f"{'the champion' if champion and champion['init'] else 'random weights'}")
            trained = outcome["train"] = _run(
                train_model, model, plan.config, str(run_dir / "train"), champion["init"] if champion else None,
                plan.minutes, plan.steps, {d: versions[d] for d in plan.datasets}, tags, fail_at, plan.limit)
            say(model, f"challenger trained in {trained['seconds']:.0f} s: "
                       + ", ".join(f"{k} {v:,} steps" for k, v in trained["steps"].items()))
            metrics: dict[str, float] = {}
            for dataset in plan.datasets:
                say(model, f"sampling and scoring the challenger on {dataset}")
                metrics.update(_evaluate(trained["model_dir"], dataset, plan, str(run_dir / f"samples-{dataset}"),
                                         versions, tags, "challenger", fail_at))
            outcome["metrics"] = metrics
            if champion is None:
                existing = tracking.version_by_alias(name, tracking.CHAMPION)
                if existing is not None:  # a scratch plan with a champion already: score it here too
                    champion = outcome["champion"] = {"version": str(existing.version),
                                                      "uri": f"models:/{name}/{existing.version}"}
            champion_metrics: dict[str, float] | None = None
            if champion is not None:
                champion_metrics = {}
                for dataset in plan.datasets:
                    say(model, f"sampling and scoring the champion on {dataset}")
                    # the downloaded lineage when there is one (no second registry load), else the pinned URI
                    champion_metrics.update(_evaluate(champion.get("model_dir") or champion["uri"], dataset, plan,
                                                      str(run_dir / f"champion-{dataset}"), versions, tags,
                                                      "champion"))
            outcome["champion_metrics"] = champion_metrics
            tracking.log_metrics(metrics)
            if champion_metrics:
                tracking.log_metrics({f"champion/{k}": v for k, v in champion_metrics.items()})
            # Versions are compared only within one evaluation context (gates.py): both were scored just now.
            context = {"profile": profile, "config": plan.config, "samples": str(plan.samples),
                       **({"queries": str(plan.queries)} if plan.queries else {}),
                       "sample_steps": str(plan.sample_steps), "seed": "0",
                       "datasets": ",".join(f"{d}@{versions[d]}" for d in plan.datasets), "scoring": SCORING_VERSION}
            # the gate's sample count: queries for the benchmark (the n of its top-k rates), else samples
            say(model, "registering the challenger; the gate decides")
            registration = outcome["registration"] = _run(
                register_and_gate, trained["model_dir"], name, metrics, champion_metrics, plan.queries or plan.samples,
                context, tags, fail_at, champion["version"] if champion else None)
            outcome["status"] = "registered"
            say(model, f"registered {name} version {registration['version']}: "
                       + ("promoted to champion" if registration["promoted"] else "the champion stays"))
    except Exception as error:  # noqa: BLE001  (reported in the result; the other branches go on)
        failed = error if isinstance(error, _TaskFailed) else _TaskFailed("nightly-retrain", error)
        outcome.update(status="failed", task=failed.task_name,
                       error=f"{type(failed.error).__name__}: {failed.error}")
        say(model, f"FAILED in task {failed.task_name}: {outcome['error']}")
    finally:
        outcome["seconds"] = time.perf_counter() - start
    return outcome


def _no_init_reason(model: str, config: str, name: str, profile: str, champion: dict[str, Any] | None) -> str | None:
    """Why a plan that continues the champion cannot (nothing of this model and config to continue), or None."""
    from chemgen.models.specs import model_spec
    from chemgen.lineage import shipped_lineage

    shipped = shipped_lineage(model_spec(model).shipped_config)
    if champion is None:
        return (f"no champion registered as {name} and no shipped lineage at {shipped}: the {profile} profile "
                f"continues the champion and does not train {model} from scratch")
    if champion["init"] is None:
        return (f"neither the champion ({name} version {champion['version']}) nor the shipped lineage at {shipped} "
                f"is a {model} {config} lineage to continue: the {profile} profile does not train from scratch")
    return None


@task(name="model-branch", retries=0)
def model_branch(model: str, plan: Plan, name: str, profile: str, versions: dict[str, str], run_dir: Any,
                 tags: dict[str, str], fail_at: str | None, events: str | None) -> dict[str, Any]:
    """One model's branch as a task of its own, so that branches can run side by side (`_branch`)."""
    return _branch(model, plan, name, profile, versions, run_dir, tags, fail_at, events)


@flow(name="nightly-retrain", log_prints=True)
def nightly_retrain(profile: str = "demo", models: list[str] | None = None, model_names: dict[str, str] | None = None,
                    data_dir: str | None = None, fail_at: str | None = None,
                    overrides: dict[str, Any] | None = None, parallel: bool = False,
                    events: str | None = None) -> Any:
    """Curate once, then retrain, register and gate every model of the profile; see the module docstring.

    ``models`` runs only these branches (default: every plan of the profile); ``model_names`` registers a model
    under another name (default: `registered_name`). ``overrides`` changes fields of the profile
    (``qm9_rows``, ``mp20_rows``) and of a model's plan (``{"adit": {"steps": {"dit": 5}, "init": None}}``).
    ``fail_at`` injects a failure into one task (``train``, ``sample-molecule``, ``sample-crystal``,
    ``register``) of every branch, or of one model's branch (``"gfmdiff:register"``), to exercise retries and
    isolation. ``parallel`` runs the branches side by side, as tasks on the flow's task runner (the main job gives
    it a process pool, `chemgen.flows.main_job`); otherwise one after the other in this process. ``events`` is a
    file the flow and its branches append what they do to (`chemgen.flows.events`).

    Returns the result: the curated datasets and each branch's outcome (``branches``; ``failed`` lists the
    branches that failed, with their task and error). When a branch failed, the flow run ends Failed, with
    that result, only after every branch has finished (see the end of this function).
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    overrides = dict(overrides or {})
    base = PROFILES[profile]
    plans = dict(base.plans)
    for model in [key for key in overrides if key not in ("qm9_rows", "mp20_rows")]:
        if model not in plans:
            raise UsageError(f"unknown override {model!r}: a profile field (qm9_rows, mp20_rows) or a model of "
                             f"the profile ({', '.join(plans)})")
        plans[model] = replace(plans[model], **overrides.pop(model))
    unknown = [m for m in models or () if m not in plans]
    if unknown:
        raise UsageError(f"the {profile} profile has no plan for {', '.join(unknown)} (it has {', '.join(plans)})")
    plans = {m: p for m, p in plans.items() if models is None or m in models}
    chosen = replace(base, plans=plans, **overrides)
    names = {m: (model_names or {}).get(m) or registered_name(profile, m) for m in plans}
    start = time.perf_counter()
    run_dir = chemgen_home() / "runs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}"
    with tracking.run("nightly-retrain", tags={"prefect.flow_run_id": str(flow_run.id), "profile": profile,
                                               "models": ",".join(plans)}) as run:
        tracking.log_params({"profile.qm9_rows": chosen.qm9_rows, "profile.mp20_rows": chosen.mp20_rows,
                             "profile.models": ",".join(plans)})
        tags = {"mlflow.parentRunId": run.info.run_id, "prefect.flow_run_id": str(flow_run.id)}
        # Curated once for every branch: a failure here fails the flow (no branch has data to train on).
        needed = [d for d in DATASET_ORDER if any(d in p.datasets for p in plans.values())]
        rows = {"qm9": chosen.qm9_rows, "mp20": chosen.mp20_rows}
        say = RunEvents(events).say
        say("flow", "curating " + ", ".join(f"{n} ({rows[n] or 'all'} rows)" for n in needed))
        datasets = [curate_dataset(name, rows[name], data_dir) for name in needed]
        say("flow", "curated: " + ", ".join(f"{d['name']}@{d['version']} ({'reused' if d['reused'] else 'new'})"
                                            for d in datasets))
        # The exact versions curated here travel to training and scoring (a slice never becomes LATEST).
        versions = {d["name"]: d["version"] for d in datasets}
        for d in datasets:
            from chemgen.data.store import read_manifest

            tracking.log_dataset_manifest(read_manifest(d["name"], d["version"]))
        # Each branch under its own name; side by side on the task runner's workers, or one after the other.
        if parallel:
            futures = {m: model_branch.submit(m, p, names[m], profile, versions, run_dir / m, tags,
                                              _fail_at_for(m, fail_at), events) for m, p in plans.items()}
            branches = {m: f.result() for m, f in futures.items()}
        else:
            branches = {m: _branch(m, p, names[m], profile, versions, run_dir / m, tags, _fail_at_for(m, fail_at),
                                   events) for m, p in plans.items()}
        failed = [{"model": m, "task": b["task"], "error": b["error"]} for m, b in branches.items()
                  if b["status"] == "failed"]
        if failed:
            import mlflow

            mlflow.set_tag("failed_branches", ",".join(f["model"] for f in failed))
        tracking.log_metrics({"flow_seconds": time.perf_counter() - start})
    result = {"profile": profile, "datasets": datasets, "branches": branches, "failed": failed,
              "run_dir": str(run_dir), "mlflow_run_id": run.info.run_id, "seconds": time.perf_counter() - start}
    if not failed:
        return result
    # A failed branch must not stop the others, so its tasks' failures are caught as states above (return_state)
    # rather than raised through the flow; the flow run's final state then says that a branch failed by
    # returning a Failed state (Prefect's way to set a flow's final state explicitly) once every branch has
    # finished. Its data is a BranchFailed holding the whole result: calling the flow raises it (``.result``),
    # and ``return_state=True`` gives the state, whose ``result(raise_on_failure=False)`` is that exception.
    tracking.client().set_terminated(run.info.run_id, "FAILED")
    message = (f"{len(failed)} of {len(branches)} branches failed: "
               + "; ".join(f"{f['model']} in task {f['task']!r}: {f['error']}" for f in failed))
    return Failed(message=message, data=BranchFailed(message, result))

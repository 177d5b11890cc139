"""Back from a training run (another machine's or this one's): score what `chemgen.training.standalone` wrote,
and promote its checkpoint into the shipped lineage (``models/weights/<config>/``) only when the gate prefers it.

A run folder holds ``lineage/`` (the new checkpoint and the lineage log), ``samples_<dataset>.pt`` for each
dataset the model samples (``samples_molecule.pt`` / ``samples_crystal.pt`` in runs before datasets named
them), the model's own diagnostics files (ADiT: ``reconstructions.pt``) and ``report.json``. Scores are computed here, on the
CPU machine with the chemistry stack, against the dataset versions the run trained on. The shipped
lineage's manifest keeps the scores and the evaluation context of its checkpoint, so the next run is
compared on equal terms (`chemgen.gates.decide`: same context, one-sided 95 % bounds).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


from chemgen.datasets import DATASETS, DEFAULT_DATASET
from chemgen.gates import Evaluation, GateDecision, decide, gate_metrics_for
from chemgen import lineage
from chemgen.lineage import LineageError, shipped_lineage
from chemgen.models.protocol import ModelSpec
from chemgen.models.specs import import_object, model_spec
from chemgen.samples import load_samples, sampling_overrides
from chemgen.scoring import SCORING_VERSION


def score_samples(path: str | os.PathLike, dataset: str, versions: dict[str, str],
                  store: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                  limit: int | None = None) -> dict[str, float]:
    """Score a samples file of ``dataset`` (or kind) with the reference protocols against the given versions."""
    from chemgen.datasets import resolve_dataset
    from chemgen.samples import split_failures, to_systems
    from chemgen.scoring import report

    dataset, kind = resolve_dataset(dataset)
    systems = to_systems(load_samples(path, limit), dataset)
    metrics, table, scores = report.score_generated(*split_failures(systems), dataset, store, versions.get(dataset))
    if out_dir is not None:
        report.save_report(metrics, table, scores, kind, Path(out_dir) / kind, context={"input": str(path)})
    return metrics


def score_run(run_dir: str | os.PathLike, store: str | os.PathLike | None = None,
              limit: int | None = None) -> dict[str, Any]:
    """Scores of both kinds (``molecule/...``, ``crystal/...``), reconstruction stability, and the context.

    ``limit`` scores the first samples only, so that a run is evaluated in the shipped checkpoint's context
    (the gate never compares different sample counts; both runs seed their first batch alike)."""
    run_dir = Path(run_dir)
    manifest = lineage.read_manifest(run_dir / "lineage")
    spec = model_spec(manifest.get("model", "adit"))
    if not spec.sample_datasets:   # DiffSpectra: its elucidation benchmark's candidates, not unconditional samples
        return _score_benchmark_run(run_dir, spec)
    versions = dict(ref.split("@", 1) for ref in manifest.get("data", []))
    scores: dict[str, float] = {}
    samples, sample_paths = {}, {}
    for dataset in spec.sample_datasets:
        kind = DATASETS[dataset].kind
        path = run_dir / f"samples_{dataset}.pt"
        if not path.is_file() and dataset == DEFAULT_DATASET[kind]:
            path = run_dir / f"samples_{kind}.pt"   # runs from before samples were named by dataset
        sample_paths[dataset] = path
        samples[kind] = int(load_samples(path, limit).mask.shape[0])
        metrics = score_samples(path, dataset, versions, store, out_dir=run_dir / "scores", limit=limit)
        scores.update({f"{kind}/{k}": float(v) for k, v in metrics.items()})
    for scorer in spec.run_scorers:   # the model's own diagnostics files (ADiT: VAE reconstructions)
        scores.update(import_object(scorer)(run_dir))
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    drawn: dict[str, Any] = {}
    for dataset in spec.sample_datasets:
        drawn.update(sampling_overrides(sample_paths[dataset]))
    context = {"samples": str(min(samples.values())), "seed": "1000", "data": ",".join(sorted(manifest.get("data", []))),
               **sampling_context(spec, manifest["config"], drawn), "scoring": SCORING_VERSION}
    return {"scores": scores, "samples": min(samples.values()), "context": context, "report": report}


def _score_benchmark_run(run_dir: Path, spec: ModelSpec) -> dict[str, Any]:
    """`score_run` for a model scored by the elucidation benchmark (``<run>/candidates.pt``); its sample count
    is the number of queries."""
    path = run_dir / "candidates.pt"
    if not path.is_file():
        raise LineageError(f"{run_dir}: a run of {spec.name} is scored by the elucidation benchmark, and it has no "
                           f"candidates.pt (sample them with the GPU command's --benchmark, or `python -m "
                           f"chemgen.models.diffspectra.candidates --model {run_dir / 'lineage'} ...`)")
    from chemgen.elucidation.benchmark import score_run_candidates

    scores, context, queries = score_run_candidates(path)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    # no training-data version in the context: the queries are fixed test molecules (their identity is in it),
    # while the spectra store a lineage trains on grows from run to run
    context.update(scoring=SCORING_VERSION)
    return {"scores": scores, "samples": queries, "context": context, "report": report}


# A context key of `ModelSpec.sampling_settings` -> the `generate` argument that overrides the config's value
SAMPLING_ARGUMENTS = {"sampling_steps": "num_steps", "cfg_scale": "cfg_scale", "solver": "solver"}


def sampling_context(spec: ModelSpec, config: dict[str, Any], drawn: dict[str, Any] | None = None) -> dict[str, str]:
    """How a run's samples were drawn (ADiT: ODE steps and guidance; GFMDiff: ancestral steps): read from its
    config by the model's `ModelSpec.sampling_settings`, unless the samples file records another value."""
    context = {}
    for key, dotted in spec.sampling_settings:
        value: Any = config
        for part in dotted.split("."):
            value = value[part]
        override = (drawn or {}).get(SAMPLING_ARGUMENTS.get(key, key))
        context[key] = str(override if override is not None else value)
    return context


def promote_run(run_dir: str | os.PathLike, scored: dict[str, Any],
                target: str | os.PathLike | None = None) -> tuple[GateDecision, Path]:
    """Replace the shipped checkpoint with the run's if the gate prefers it; returns the decision and the target."""
    run_dir = Path(run_dir)
    source = run_dir / "lineage"
    manifest = lineage.read_manifest(source)
    target = Path(target) if target is not None else shipped_lineage(manifest["config"]["name"])
    challenger = Evaluation(dict(scored["scores"]), scored["samples"], scored["context"])
    champion = None
    if lineage.is_lineage(target):
        shipped = lineage.read_manifest(target)
        evaluation = shipped.get("evaluation", {})
        champion = Evaluation(dict(shipped.get("scores", {})), evaluation.get("samples"), evaluation.get("context", {}))
    decision = decide(gate_metrics_for(model_spec(manifest.get("model", "adit")).registered_name), challenger, champion)
    if decision.promote:
        checkpoint = lineage.load(source)
        meta = {k: v for k, v in manifest.items() if k not in ("format", "dtype", "parameters", "saved_utc", "shards",
                                                                "content_hash", "completed_stages", "run_report")}
        meta.update(scores=scored["scores"], evaluation={"samples": scored["samples"], "context": scored["context"]},
                    gate=decision.reason)
        lineage.save(target, checkpoint.groups, meta)
        shutil.copyfile(source / "lineage.jsonl", target / "lineage.jsonl")  # the run's log extends the shipped one
    return decision, target


def rescore_shipped(run_dir: str | os.PathLike, store: str | os.PathLike | None = None,
                    target: str | os.PathLike | None = None, resample: int | None = None,
                    **sampling: Any) -> dict[str, Any]:
    """Re-score the shipped checkpoint under today's scoring, from the samples of the run that produced it.

    When scoring changes (`chemgen.scoring.SCORING_VERSION`), the shipped checkpoint's recorded scores
    belong to another context and the gate would refuse every challenger. The run folder that was
    promoted still holds the checkpoint's samples: they are scored again (the same count as before)
    and only the manifest's scores and evaluation are replaced, atomically; the weights are untouched.

    ``resample`` moves the lineage to a new evaluation context instead: the shipped checkpoint draws that
    many samples again (seed 1000, as a training run does; ``sampling`` as for `save_samples`, e.g.
    ``num_steps``) into the run folder, and those are scored.
    """
    from chemgen.io import atomic_write

    run_dir = Path(run_dir)
    produced = lineage.read_manifest(run_dir / "lineage")
    target = Path(target) if target is not None else shipped_lineage(produced["config"]["name"])
    shipped = lineage.read_manifest(target)
    if produced["steps"] != shipped["steps"] or produced.get("data") != shipped.get("data"):
        raise lineage.LineageError(f"{run_dir} did not produce {target}: steps {produced['steps']} vs "
                                   f"{shipped['steps']}, data {produced.get('data')} vs {shipped.get('data')}")
    if resample is not None and not model_spec(produced.get("model", "adit")).sample_datasets:
        raise LineageError(f"{produced.get('model')} is scored by the elucidation benchmark: sample the shipped "
                           f"checkpoint's candidates into {run_dir / 'candidates.pt'} (python -m "
                           "chemgen.models.diffspectra.candidates) and rescore without --resample")
    if resample is not None:
        from chemgen.models.loading import load_lineage_model
        from chemgen.samples import save_samples

        model = load_lineage_model(target)
        for dataset in model_spec(produced.get("model", "adit")).sample_datasets:
            save_samples(model, dataset, resample, run_dir / f"samples_{dataset}.pt", 500, seed=1000, **sampling)
    scored = score_run(run_dir, store, limit=resample or shipped.get("evaluation", {}).get("samples"))
    shipped.update(scores=scored["scores"], evaluation={"samples": scored["samples"], "context": scored["context"]})
    with atomic_write(target / "manifest.json") as handle:
        json.dump(shipped, handle, indent=1)
        handle.write("\n")
    return scored


def log_run(run_dir: str | os.PathLike, scored: dict[str, Any], decision: GateDecision, target: Path) -> str:
    """Record a GPU run as an MLflow run here: what it trained (params), its throughput and diagnostics,
    the scores of its samples, the gate's decision, and its report and lineage manifest as artifacts."""
    import mlflow

    from chemgen import tracking

    run_dir = Path(run_dir)
    report = scored.get("report", {})
    manifest = lineage.read_manifest(run_dir / "lineage")
    with tracking.run(f"lineage-run-{manifest['config']['name']}", tags={"chemgen.kind": "lineage-run",
                                                                    "gate.decision": decision.reason[:5000]}) as active:
        tracking.log_params({"model": manifest.get("model"), "config": manifest["config"]["name"],
                             "device": report.get("device"), "init": report.get("init"),
                             "data": ",".join(manifest.get("data", [])), "promoted": decision.promote,
                             "target": str(target), "content_hash": manifest["content_hash"],
                             **{f"steps.{k}": v for k, v in manifest.get("steps", {}).items()}})
        metrics: dict[str, float] = dict(scored["scores"])
        for key, value in report.items():
            if isinstance(value, dict):  # stage results and diagnostics: vae/systems_per_second, vae/mfu, ...
                metrics.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
        tracking.log_metrics(metrics)
        for name in ("report.json", "lineage/manifest.json", "lineage/lineage.jsonl"):
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name), artifact_path=str(Path(name).parent) if "/" in name else None)
        return active.info.run_id

"""The ``elucidate`` flow: structure elucidation for a batch of uploads, one task per query.

A query is one molecule's spectrum files (an IR and/or a Raman file; ``ir:`` / ``raman:`` before a file name
says its kind when the file does not) and optionally its molecular formula::

    elucidate_batch(queries=[{"files": ["a.ir.jdx", "a.raman.jdx"], "formula": "C7H8O2"},
                             {"files": ["raman:b.csv"], "name": "b"}], model="models:/chemgen-diffspectra@champion")

Candidates come from every source that exists (the computed-spectra library, the chemist's own libraries,
DiffSpectra: `chemgen.elucidation.pooling`), or those ``sources`` names. The model is resolved once (a registry
URI is downloaded to its lineage folder; without a model and without ``sources`` naming it, the libraries
answer alone), then each query runs `chemgen.elucidation.run.elucidate` in its own task, writing its own folder ``<out_dir>/<name>/``
(candidates.csv, candidates.sdf, candidate-NN.png, query.json). ``candidates`` names a file of the chemist's own
candidate molecules (SMILES or SDF): before any query, their spectra are computed (GFN2-xTB) into the library
``<out_dir>/candidates`` (``lines.csv`` there gives every line's status and reason), which every query then searches
beside the chemist's other libraries. Queries run one after the other: sampling
uses every core torch is given. A query that fails (a bad upload, a formula the model cannot sample, any
error) is reported with its error and the others go on; nothing of another query is lost, and a failed
query's folder is left as it was (the library checks everything before it writes). The flow's result lists
every query's status, folder and top candidate, and is written to ``<out_dir>/batch.json``. The run's progress
(`chemgen.flows.progress`) moves once the model is resolved and after each query.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from chemgen.errors import ChemgenError, UsageError
from chemgen.paths import chemgen_home
from chemgen.flows.progress import FlowProgress

QUERY_KEYS = ("files", "formula", "name")


@task(name="resolve-model", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def resolve_model(model: str | None, required: bool = True) -> str | None:
    """A local lineage folder for the model: the shipped one (None), a folder as given, or a registered
    version's downloaded checkpoint (the URI itself for versions registered before lineages). None when no model
    is named, none ships and none is ``required``."""
    from chemgen.elucidation.run import NoTrainedModelError, default_model

    if model is None:
        try:
            return str(default_model())
        except NoTrainedModelError:
            if required:
                raise
            return None
    if model.startswith(("models:/", "runs:/")):
        from chemgen.models.loading import registered_lineage

        local = registered_lineage(model)
        return str(local) if local is not None else model
    return model


CANDIDATES_LIBRARY = "candidates"


@task(name="compute-candidates", retries=0, cache_policy=NO_CACHE)
def compute_candidates(path: str, out_dir: str, limit: int | None = None) -> dict[str, Any]:
    """The spectra of the chemist's candidate molecules, into ``<out_dir>/candidates`` (a re-run computes only
    what is missing); returns the counts and the library's folder."""
    from chemgen.spectra.user_library import MAX_CANDIDATES, add_candidates

    def show(done: int, total: int, name: str) -> None:
        if done == total or done % 10 == 0:
            print(f"candidates: {done} of {total} computed ({name})")

    report = add_candidates(CANDIDATES_LIBRARY, path, root=out_dir, progress=show, limit=limit or MAX_CANDIDATES)
    return {"library": str(report.library), "read": report.read, "computed": report.computed,
            "failed": report.failed, "skipped": report.skipped, "seconds": round(report.seconds, 1)}


@task(name="elucidate-query", retries=0, cache_policy=NO_CACHE, task_run_name="elucidate-{name}")
def elucidate_query(name: str, files: list[str], formula: str | None, model: str | None, out_dir: str,
                    samples: int, steps: int | None, seed: int, top_k: int, rerank: bool,
                    sources: list[str] | None = None, user_roots: list[str] | None = None) -> dict[str, Any]:
    """One query through every source; a bad upload is not retried (it would fail the same way)."""
    from chemgen.elucidation.run import elucidate

    result = elucidate(files, model, out_dir, formula=formula, sources=sources, num_samples=samples, num_steps=steps,
                       seed=seed, top_k=top_k, rerank=rerank, name=name, user_roots=user_roots)
    return result.summary


def _error(error: BaseException) -> str:
    """A user error as its message (it names the file); anything else with its type."""
    return str(error) if isinstance(error, ChemgenError) else f"{type(error).__name__}: {error}"


def _queries(queries: Any) -> list[tuple[str, dict[str, Any], str | None]]:
    """(name, query, problem) per query: unique folder names, and what is wrong with a malformed query (it is
    that query's failure, not the batch's)."""
    from chemgen.elucidation.run import query_name
    from chemgen.spectra.molecules import safe_name

    if not isinstance(queries, list) or not queries:
        raise UsageError("queries must be a non-empty list of {'files': [...], 'formula': ..., 'name': ...}")
    taken: set[str] = set()
    planned = []
    for i, query in enumerate(queries, start=1):
        problem = None
        if not isinstance(query, dict):
            query, problem = {}, f"query {i} is not a mapping with 'files'"
        elif sorted(set(query) - set(QUERY_KEYS)):
            problem = f"query {i}: unknown key(s) {sorted(set(query) - set(QUERY_KEYS))} (known: {list(QUERY_KEYS)})"
        elif (not isinstance(query.get("files"), list) or not query["files"]
              or not all(isinstance(f, str) for f in query["files"])):
            problem = f"query {i}: 'files' must be a non-empty list of file names"
        default = query_name(query["files"]) if not problem else f"query-{i}"
        planned.append((safe_name(str(query.get("name") or default), taken), query, problem))
    return planned


@flow(name="elucidate", log_prints=True)
def elucidate_batch(queries: list[dict[str, Any]], model: str | None = None, out_dir: str | None = None,
                    samples: int = 32, steps: int | None = 100, seed: int = 0, top_k: int = 10,
                    rerank: bool = True, sources: list[str] | None = None, candidates: str | None = None,
                    candidate_limit: int | None = None) -> dict[str, Any]:
    """Elucidate every query (module docstring); returns ``{"out_dir", "model", "queries": [...], "failed",
    "candidates", "flow_run_id"}``, each query as ``{"name", "status": "done" | "failed", "out_dir", "error", "top",
    ...}``; ``candidates``: the computed candidate file's counts (None without one)."""
    planned = _queries(queries)
    progress = FlowProgress("resolving the model")
    start = time.perf_counter()
    run_id = str(flow_run.id or "local")[:8]
    out = Path(out_dir) if out_dir else chemgen_home() / "elucidation" / f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"
    from chemgen.elucidation.pooling import parse_sources

    chosen = parse_sources(sources)
    # a model asked for (by name, or as a source) that cannot be found fails the batch: no query could use it
    model_dir = resolve_model(model, required=model is not None or (chosen is not None and "model" in chosen)) \
        if chosen is None or "model" in chosen else None
    # the model's share is a guess (a download, or nothing): the candidates and the queries take the rest
    progress.update(0.05, f"model resolved; {len(planned)} queries to run")
    computed, user_roots = None, None
    if candidates:
        if chosen is not None and "user" not in chosen:
            raise UsageError("a candidates file was given but the sources leave out 'user' (your candidates)")
        progress.update(0.05, "computing the spectra of your candidates")
        computed = compute_candidates(candidates, str(out), candidate_limit)
        from chemgen.elucidation.pooling import user_library_root

        user_roots = [str(user_library_root()), computed["library"]]
        print(f"candidates: {computed['computed']} computed, {computed['failed']} could not be "
              f"({Path(computed['library']) / 'lines.csv'} says why), {computed['skipped']} already there")
        progress.update(0.5, f"{computed['computed']} candidates computed; {len(planned)} queries to run")
    first = 0.5 if candidates else 0.05
    results = []
    for i, (name, query, problem) in enumerate(planned, start=1):
        outcome: dict[str, Any] = {"name": name, "files": query.get("files"), "formula": query.get("formula"),
                                   "out_dir": str(out / name), "status": "failed", "error": problem, "top": None}
        if problem is None:
            state = elucidate_query(name, query["files"], query.get("formula"), model_dir, str(out / name), samples,
                                    steps, seed, top_k, rerank, list(chosen) if chosen else None, user_roots,
                                    return_state=True)
            if state.is_completed():
                summary = state.result()
                outcome.update(status="done", error=None, candidates=len(summary["candidates"]),
                               num_valid=summary["num_valid"], num_samples=summary["num_samples"],
                               top=summary["candidates"][0] if summary["candidates"] else None,
                               confidence=summary["confidence"],
                               sources=[s["source"] for s in summary["sources"] if s["searched"]])
            else:
                outcome["error"] = _error(state.result(raise_on_failure=False))
        if outcome["status"] == "failed":
            print(f"{name}: failed: {outcome['error']}")
        results.append(outcome)
        progress.update(first + (0.95 - first) * i / len(planned), f"query {i} of {len(planned)} done")
    result = {"out_dir": str(out), "model": model_dir, "queries": results, "candidates": computed,
              "failed": [r["name"] for r in results if r["status"] == "failed"],
              "seconds": round(time.perf_counter() - start, 2),
              "flow_run_id": str(flow_run.id) if flow_run.id else None}
    from chemgen.io import atomic_write

    with atomic_write(out / "batch.json") as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    progress.update(1.0, f"done: {len(results) - len(result['failed'])} of {len(results)} queries elucidated")
    return result

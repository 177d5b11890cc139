"""Crystal screening for a chemical system: candidates from every source -> validity -> CHGNet relaxation -> one
ranking, with the sources compared.

``chemical_system`` (e.g. "Li-Mn-O", optionally with a ``formula``) is what a team asks for; the sources
(`chemgen.screening`) each yield candidates of it: ADiT's samples of the system, ion substitution into MP-20's
training structures, PyXtal's random symmetric structures, and the team's uploaded CIF/extxyz files. ``n`` is shared
among the generating sources: substitution first, then ADiT, then random structures, which fill what the others
could not; uploads come on top. Without a system the model samples unconditionally, as a plain generation benchmark.

The MP-20 hull (with the team's ``reference_entries`` added), CHGNet's elemental references and its error (sigma)
are loaded once, by one task, before the fan-out (on a cold cache that task runs the fits, minutes, once).
Relaxations then fan out as one Prefect task per batch of ``chunk`` candidates of one source (batched CHGNet FIRE,
`chemgen.scoring.relax`), the sources taking turns, at most ``workers`` batches in flight, bounded by
``max_relaxed`` candidates and ``relax_budget_minutes``; whatever the budget leaves is reported unrelaxed. Tasks
leave torch's thread count alone: it is process-wide (Dask's worker processes start with one thread each; in-process
threads share what the process was given, e.g. ``OMP_NUM_THREADS``).

After relaxation `chemgen.screening.pipeline` de-duplicates across sources, scores E_hull and novelty, ranks, and
compares the sources: valid, unique, novel, metastable, S.U.N. and M.S.U.N. rates, E_hull distributions (one plot,
sources overlaid), wall time per candidate. Output: candidates.csv (every candidate, ranked, with its source, space
group before and after relaxation and CIF), each valid candidate's CIF in cifs/ (relaxed where it was), the
metastable ones in one CIF, a Markdown report and the E_hull plot, all logged to one MLflow run. The run's progress
(`chemgen.flows.progress`) moves after each source and each relaxation batch, for the web app.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from chemgen import tracking
from chemgen.errors import UsageError
from chemgen.paths import chemgen_home
from chemgen.flows.progress import FlowProgress

# Relaxation tasks in flight at once (the flow's ``workers``): each holds a batch of CHGNet graphs, and on
# the thread runner they share this process's cores. Raise it to the worker count of a Dask cluster.
DEFAULT_WORKERS = 2
# The thread runner's own bound, whatever ``workers`` asks for: never more threads than cores.
MAX_THREADS = max(1, os.cpu_count() or 1)
# The Dask dashboard has no authentication: it listens on this machine only unless asked otherwise.
DASHBOARD_ADDRESS = "127.0.0.1:8787"
# Shares of the progress bar: the sources, then relaxation, then the ranking and the report.
PROGRESS_RELAX_START, PROGRESS_RELAX_END = 0.3, 0.9


def parse_chemical_system(text: str | None) -> tuple[str, ...] | None:
    """The element symbols of "Li-Fe-O", sorted and without repeats (`chemgen.screening.request`)."""
    from chemgen.screening.request import parse_chemical_system as parse

    return parse(text)


@task(name="generate-candidates", cache_policy=NO_CACHE)
def generate_candidates(source: str, request: Any, n: int, seed: int, model: str | None, num_steps: int | None,
                        max_samples: int, data_dir: str | None, uploads: list[str] | None,
                        threshold: float = 1e-3) -> Any:
    """One source's candidates for the request (`chemgen.screening`): a `SourceRun`."""
    from chemgen.screening import model_source, random_search, substitution, uploads as uploaded

    if source == "adit":
        return model_source.generate(request, n, seed, model=model, max_samples=max_samples, num_steps=num_steps,
                                     log=print)
    if source == "substitution":
        return substitution.generate(request, n, seed, data_dir=data_dir, threshold=threshold, log=print)
    if source == "random":
        return random_search.generate(request, n, seed, log=print)
    return uploaded.generate(request, uploads or [])


# Inputs are big objects (the hull, candidate lists): NO_CACHE spares Prefect hashing them for a cache key.
@task(name="load-hull-and-references", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def load_energy_references(references_path: str | None, data_dir: str | None, sigma: float | None,
                           extra_entries: list[Any] | None = None) -> dict[str, Any]:
    """The MP-20 hull (with ``extra_entries``, the team's), CHGNet's elemental references and sigma, once per flow
    run (from the caches of `chemgen.scoring.hull`, which fit them on first use, one fit however many callers)."""
    from chemgen.scoring.hull import load_chgnet_references, load_chgnet_sigma, load_mp20_hull
    from chemgen.screening.pipeline import hull_with

    references = load_chgnet_references(references_path, data_dir=data_dir)
    if sigma is None:
        sigma = load_chgnet_sigma(data_dir=data_dir, references=references).sigma
    return {"hull": hull_with(load_mp20_hull(data_dir), extra_entries or ()), "references": references,
            "sigma": sigma}


@task(name="relax-and-hull", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def relax(indices: list[int], systems: list[Any], energy: dict[str, Any], fmax: float, steps: int,
          deadline: float | None = None) -> list[dict[str, Any]]:
    """Batched CHGNet relaxation of a batch of candidates (one forward pass per FIRE step for the batch), then
    formation energy and E_hull on the hull of ``energy`` (`load_energy_references`). A batch whose turn comes
    after ``deadline`` (a ``time.time()``) is not relaxed; one under way stops at it (status time_budget)."""
    from chemgen.atoms import AtomicSystem
    from chemgen.scoring.stability import relax_and_score

    start = time.time()
    if deadline is not None and start >= deadline:
        return [{"index": index, "relax_status": None, "error": "not relaxed: the relaxation budget was spent",
                 "relaxed": None, "relax_seconds": 0.0} for index in indices]
    records = relax_and_score([s.to_pymatgen() for s in systems], energy["hull"], energy["references"],
                              fmax=fmax, steps=steps, progress=False,
                              time_budget_s=None if deadline is None else deadline - start)
    share = (time.time() - start) / max(1, len(indices))
    return [{"index": index, "e_form_per_atom": r.e_form_per_atom, "e_above_hull": r.e_above_hull,
             "relax_steps": r.steps, "relax_status": r.status, "error": r.error, "relax_seconds": share,
             # a failed relaxation hands back its input: only a structure CHGNet moved counts as relaxed
             "relaxed": AtomicSystem.from_pymatgen(r.structure) if r.structure is not None and r.status != "failed"
             else None}
            for index, r in zip(indices, records, strict=True)]


@task(name="rank-and-report", cache_policy=NO_CACHE)
def rank_and_report(runs: list[Any], relaxed: list[dict[str, Any]], out_dir: str, system: str,
                    sigma: float, options: dict[str, Any]) -> dict[str, Any]:
    """The pooled candidates ranked, compared per source, and written (`chemgen.screening.pipeline`, `.report`)."""
    from chemgen import io as structure_io
    from chemgen.io import atomic_write
    from chemgen.scoring.report import training_references
    from chemgen.scoring.stability import stability_metrics
    from chemgen.screening import pipeline, report

    out = Path(out_dir)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    candidates = [c for run in runs for c in run.candidates]
    valid = pipeline.validity(candidates)
    by_index = {r["index"]: r for r in relaxed}
    table = pipeline.assemble(candidates, valid, by_index, training_references(data_dir=options.get("data_dir")))
    # what a valid candidate is now: relaxed where CHGNet moved it, else as generated
    structures = {i: (by_index.get(i, {}).get("relaxed") or candidates[i].structure)
                  for i in range(len(candidates)) if valid[i][0]}
    cifs = report.write_cifs(structures, out)
    table["cif"] = [cifs.get(i) for i in table["index"]]
    table["space_group"], table["space_group_number"] = table.space_group_after, table.space_group_number_after
    relax_seconds: dict[str, float] = {}
    for row in relaxed:
        source = candidates[row["index"]].source
        relax_seconds[source] = relax_seconds.get(source, 0.0) + float(row.get("relax_seconds") or 0.0)
    per_source = pipeline.source_metrics(table, runs, relax_seconds)
    unique_novel = (table.sort_values("index").unique_in_source & table.sort_values("index").novel).tolist()
    metrics = stability_metrics(table.sort_values("index").e_above_hull.astype(float).tolist(), len(candidates),
                                sigma, unique_novel, sun_prefix="chgnet_mp20+screen")
    metrics["cdvae/valid"] = float(table.valid.mean()) if len(table) else 0.0
    metrics.update({f"source/{source}/{key}": value for source, values in per_source.items()
                    for key, value in values.items()})
    with atomic_write(out / "candidates.csv") as handle:
        table.to_csv(handle, index=False)
    winners = [structures[i].replace(material_id=f"candidate_{rank}_{table.formula[i]}")
               for rank, i in enumerate(table["index"]) if table.metastable[i] and table.unique[i]
               and by_index.get(i, {}).get("relaxed") is not None]
    if winners:
        structure_io.write(out / "metastable_candidates.cif", winners)
    plot = report.plot_e_hull(table, out)
    with atomic_write(out / "report.md") as handle:
        handle.write(report.markdown(table, per_source, runs, system, plot, options))
    pooled = per_source["pooled"]
    return {"metrics": metrics, "sources": per_source, "out_dir": str(out),
            "n_metastable_sun": int(pooled["n_msun"]), "n_candidates": len(candidates)}


def bounded_map(task_fn: Any, argument_lists: list[tuple[Any, ...]], workers: int,
                on_done: Callable[[int, int], None] | None = None) -> list[Any]:
    """``task_fn.submit(*args)`` for each tuple, never more than ``workers`` unfinished at once; the results in
    order. Bounding the submissions (not only the runner) holds on any task runner, Dask's included.
    ``on_done(done, total)`` is called once per task as it finishes (failed ones too), in this thread."""
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    futures: list[Any] = []
    in_flight: set[Any] = set()

    def finished(future: Any) -> None:
        in_flight.discard(future)
        if on_done is not None:
            on_done(len(futures) - len(in_flight), len(argument_lists))

    for args in argument_lists:
        if len(in_flight) >= workers:
            finished(next(as_completed(list(in_flight))))
        future = task_fn.submit(*args)
        futures.append(future)
        in_flight.add(future)
    for future in as_completed(list(in_flight)):  # the last ones, as they finish
        finished(future)
    return [f.result() for f in futures]


@flow(name="crystal-screening", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=MAX_THREADS))
def crystal_screening(n: int = 20, model: str | None = None, seed: int = 0, num_steps: int | None = None,
                      relax_steps: int = 200, fmax: float = 0.1, references_path: str | None = None,
                      out_dir: str | None = None, chunk: int = 32, sigma: float | None = None,
                      workers: int = DEFAULT_WORKERS, data_dir: str | None = None, chemical_system: str | None = None,
                      sources: list[str] | str | None = None, formula: str | None = None,
                      uploads: list[str] | None = None, reference_entries: str | None = None,
                      max_samples: int = 256, relax_budget_minutes: float | None = None,
                      max_relaxed: int | None = None, substitution_threshold: float = 1e-3) -> dict[str, Any]:
    """Screen ``n`` candidates of ``chemical_system`` from ``sources``; see the module docstring.

    ``model``: ADiT's lineage folder or registry URI (default: the registry's champion, else the shipped lineage);
    ``max_samples``: the most samples ADiT draws to find its share in the system. ``uploads``: CIF/extxyz files of
    the team's own structures; ``substitution_threshold``: the least substitution probability a candidate needs
    (pymatgen's default 1e-3; lower gives more, less likely candidates); ``reference_entries``: a CSV of the team's formation energies (formula,
    e_form_per_atom) added to the hull. ``references_path``: CHGNet's elemental references (default: the cached fit);
    ``sigma``: CHGNet's error for the expected stable count (default: the cached held-out estimate). Relaxation:
    batches of ``chunk``, ``workers`` at a time, at most ``max_relaxed`` candidates and ``relax_budget_minutes``.
    Bad input (an unknown element or source, a formula outside the system, a bad upload or reference file) fails
    here, before anything is generated."""
    from chemgen.screening import pipeline
    from chemgen.screening.request import ScreeningRequest

    if n < 0 or chunk < 1 or workers < 1 or max_samples < 0 or (max_relaxed is not None and max_relaxed < 0):
        raise UsageError("n, max_samples and max_relaxed must be >= 0, chunk and workers >= 1")
    if formula and not chemical_system:
        raise UsageError("a formula narrows a chemical system: give the system too (e.g. Li-Mn-O with LiMn2O4)")
    request = ScreeningRequest.parse(chemical_system, formula) if chemical_system else None
    chosen = list(pipeline.parse_sources(sources, pipeline.GENERATING if request else ("adit",)))
    if uploads and "upload" not in chosen:
        chosen.append("upload")
    if request is None and set(chosen) & {"substitution", "random", "upload"}:
        raise UsageError("substitution, random structures and uploads need a chemical system (e.g. Li-Mn-O)")
    extra = pipeline.read_reference_entries(reference_entries) if reference_entries else []
    if "random" in chosen:   # a system PyXtal cannot place fails before anything runs
        from chemgen.screening.random_search import placeable_compositions

        placeable_compositions(request)
    progress = FlowProgress(f"generating candidates from {', '.join(chosen)}")
    start = time.perf_counter()
    out = out_dir or str(chemgen_home() / "runs" / f"screen-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}")
    system = request.system if request else "any (unconditional samples)"
    with tracking.run("crystal-screening", tags={"prefect.flow_run_id": str(flow_run.id)}):
        tracking.log_params({"n": n, "model": model or "default", "seed": seed, "relax_steps": relax_steps,
                             "fmax": fmax, "chunk": chunk, "workers": workers, "chemical_system": system,
                             "formula": formula or "", "sources": ",".join(chosen), "max_samples": max_samples,
                             "reference_entries": len(extra), "substitution_threshold": substitution_threshold})
        # submitted first: on a cold cache its fits (minutes) overlap the sources
        energy = load_energy_references.submit(references_path, data_dir, sigma, extra)
        runs = []
        if "upload" in chosen:   # a bad upload fails before minutes of generation
            runs.append(generate_candidates("upload", request, 0, seed, model, num_steps, max_samples, data_dir,
                                            uploads))
        # substitution first (it fails at once where no prototype fits, and may run out of likely substitutions),
        # random structures last: they fill whatever share the others could not
        generating = sorted((s for s in chosen if s in pipeline.GENERATING), key=pipeline.RUN_ORDER.index)
        remaining = n
        for position, source in enumerate(generating):   # each its share; the last fills what the others could not
            share = remaining // (len(generating) - position)
            run = generate_candidates(source, request, share, seed, model, num_steps, max_samples, data_dir, uploads,
                                      substitution_threshold)
            remaining -= len(run.candidates)
            runs.insert(len(runs) - ("upload" in chosen), run)
            progress.update(PROGRESS_RELAX_START * (position + 1) / max(1, len(generating)),
                            f"{source}: {len(run.candidates)} candidates ({run.note})")
        candidates = [c for run in runs for c in run.candidates]
        valid = [ok for ok, _ in pipeline.validity(candidates)]
        batches = pipeline.relaxation_batches(candidates, valid, chunk, max_relaxed)
        deadline = None if relax_budget_minutes is None else time.time() + 60 * relax_budget_minutes
        progress.update(PROGRESS_RELAX_START, f"{sum(valid)} of {len(candidates)} valid; relaxing "
                                              f"{sum(map(len, batches))} in {len(batches)} batches")

        def batch_done(done: int, total: int) -> None:
            share = PROGRESS_RELAX_END - PROGRESS_RELAX_START
            progress.update(PROGRESS_RELAX_START + share * done / total, f"relaxed batch {done} of {total}")

        # the future itself goes to every task: a Dask runner keeps the hull on its workers, sent once each
        relaxed = [row for rows in bounded_map(relax, [(batch, [candidates[i].structure for i in batch], energy, fmax,
                                                        relax_steps, deadline) for batch in batches],
                                               workers, batch_done)
                   for row in rows]
        progress.update(PROGRESS_RELAX_END, "de-duplicating, ranking and writing the report")
        options = {"relax_steps": relax_steps, "fmax": fmax, "reference_entries": len(extra), "data_dir": data_dir}
        summary = rank_and_report(runs, relaxed, out, system, energy.result()["sigma"], options)
        tracking.log_metrics({**summary["metrics"], "flow_seconds": time.perf_counter() - start})
        import mlflow

        mlflow.log_artifacts(summary["out_dir"], artifact_path="screening")
        progress.update(1.0, f"done: {summary['n_metastable_sun']} metastable S.U.N. of {len(candidates)}")
    result = {**summary, "seconds": time.perf_counter() - start, "flow_run_id": str(flow_run.id)}
    from chemgen.io import atomic_write

    with atomic_write(Path(summary["out_dir"]) / "summary.json") as handle:   # the result, for whoever reads files
        json.dump(result, handle, indent=1, default=float)
    return result


def dask_cluster_kwargs(n_workers: int = 2, dashboard_address: str | None = DASHBOARD_ADDRESS) -> dict[str, Any]:
    """A local Dask cluster: ``n_workers`` single-threaded processes, scheduler and dashboard on 127.0.0.1
    (``dashboard_address=None`` turns the dashboard off; another address exposes it, unauthenticated)."""
    return {"n_workers": n_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "dashboard_address": dashboard_address}


def with_dask(flow_fn: Any = crystal_screening, address: str | None = None, n_workers: int = 2,
              dashboard_address: str | None = DASHBOARD_ADDRESS) -> Any:
    """The screening flow on a Dask task runner: a local cluster (`dask_cluster_kwargs`), or the scheduler at
    ``address``. Pass ``workers=n_workers`` (or the remote cluster's size) to the flow to keep them all busy."""
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs=dask_cluster_kwargs(n_workers, dashboard_address))
    return flow_fn.with_options(task_runner=runner)

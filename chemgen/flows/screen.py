"""Crystal screening: generate -> validity -> uniqueness/novelty -> CHGNet relaxation -> E_hull -> S.U.N. ranking.

The MP-20 hull, CHGNet's elemental references and its error (sigma) are loaded once, by one task, before
the fan-out (on a cold cache that task runs the fits, minutes, once). Relaxations then fan out as one
Prefect task per batch of ``chunk`` candidates (batched CHGNet FIRE, `chemgen.scoring.relax`), at most
``workers`` of them in flight at once, whatever the task runner: threads in this process by default
(`ThreadPoolTaskRunner`, bounded too), or the workers of a Dask cluster (`with_dask`). Tasks leave torch's
thread count alone: it is process-wide, so a task setting it would change it under the others (Dask's
worker processes start with one thread each; in-process threads share what the process was given, e.g.
``OMP_NUM_THREADS``).

``chemical_system`` (e.g. "Li-Fe-O") narrows the search: only valid candidates made of those elements are
relaxed (and can be S.U.N. or metastable); the others stay in the table, marked ``in_chemical_system=False``.

The headline is the metastable rate; "stable" is also reported as an expected count (CHGNet's
held-out error, `chemgen.scoring.stability.stable_probability`). Output: candidates.csv (every candidate, ranked,
with its space group and CIF), each valid candidate's CIF in cifs/ (relaxed where it was), the metastable ones
in one CIF, a Markdown report and an E_hull plot, all logged to one MLflow run. The run's progress
(`chemgen.flows.progress`) moves after each stage and each relaxation chunk, for the web app.
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
# spglib's tolerance for the reported space group: loose, as generated and CHGNet-relaxed cells are a little off
SYMPREC = 0.1
# Shares of the progress bar: generation and the cheap screens before relaxation, relaxation up to the report.
PROGRESS_RELAX_START, PROGRESS_RELAX_END = 0.3, 0.9


def parse_chemical_system(text: str | None) -> tuple[str, ...] | None:
    """The element symbols of a chemical system such as "Li-Fe-O", sorted and without repeats ("Fe", "Li", "O");
    None for None. A UsageError names the first part that is not an element symbol."""
    if text is None:
        return None
    from pymatgen.core import Element

    parts = [part.strip() for part in str(text).split("-")]
    known = {element.name for element in Element}  # the real elements: not the isotopes D and T (aliases of H)
    for part in parts:
        if part not in known:
            raise UsageError(f"chemical system {text!r}: {part!r} is not an element symbol "
                             "(elements separated by '-', e.g. 'Li-Fe-O')")
    return tuple(sorted(set(parts)))


def in_chemical_system(system: Any, elements: tuple[str, ...] | None) -> bool:
    """Whether a generated system is made of ``elements`` only: always, without a system; never, for a
    generation failure."""
    if elements is None:
        return True
    symbols = getattr(system, "symbols", None)
    return symbols is not None and set(symbols) <= set(elements)


@task(name="generate-crystals", retries=1, retry_delay_seconds=1)
def generate(model: str, n: int, seed: int, num_steps: int | None) -> list[Any]:
    from chemgen.models.loading import load_model
    from chemgen.samples import to_systems

    decoded = load_model(model).generate(n, "crystal", seed=seed, num_steps=num_steps)
    return to_systems(decoded, "mp20")


@task(name="validity-uniqueness-novelty")
def screen_without_energies(systems: list[Any], preset: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from chemgen.samples import Failure
    from chemgen.scoring.crystals import score_crystals
    from chemgen.scoring.report import training_references

    items = [None if isinstance(s, Failure) else s for s in systems]
    scores = score_crystals(items, references=training_references(), preset=preset)
    return scores.as_dict(), [{**vars(r), "valid": r.valid} for r in scores.records]


# Inputs are big objects (the hull, candidate lists): NO_CACHE spares Prefect hashing them for a cache key.
@task(name="load-hull-and-references", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def load_energy_references(references_path: str | None, data_dir: str | None,
                           sigma: float | None) -> dict[str, Any]:
    """The MP-20 hull, CHGNet's elemental references and sigma, once per flow run (from the caches of
    `chemgen.scoring.hull`, which fit them on first use, one fit however many callers)."""
    from chemgen.scoring.hull import (
        load_chgnet_references,
        load_chgnet_sigma,
        load_mp20_hull,
    )

    references = load_chgnet_references(references_path, data_dir=data_dir)
    if sigma is None:
        sigma = load_chgnet_sigma(data_dir=data_dir, references=references).sigma
    return {"hull": load_mp20_hull(data_dir), "references": references, "sigma": sigma}


@task(name="relax-and-hull", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def relax(indices: list[int], systems: list[Any], energy: dict[str, Any], fmax: float,
          steps: int) -> list[dict[str, Any]]:
    """Batched CHGNet relaxation of a chunk of candidates (one forward pass per FIRE step for the
    chunk), then formation energy and E_hull on the hull of ``energy`` (`load_energy_references`)."""
    from chemgen.atoms import AtomicSystem
    from chemgen.scoring.stability import relax_and_score

    records = relax_and_score([s.to_pymatgen() for s in systems], energy["hull"], energy["references"],
                              fmax=fmax, steps=steps, progress=False)
    return [{"index": index, "e_form_per_atom": r.e_form_per_atom, "e_above_hull": r.e_above_hull,
             "relax_steps": r.steps, "relax_status": r.status, "error": r.error,
             # a failed relaxation hands back its input: only a structure CHGNet moved counts as relaxed
             "relaxed": AtomicSystem.from_pymatgen(r.structure) if r.structure is not None and r.status != "failed"
             else None}
            for index, r in zip(indices, records, strict=True)]


def space_group(system: Any) -> tuple[str | None, int | None]:
    """(international symbol, number) of a crystal at `SYMPREC`; (None, None) where spglib fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(system.to_pymatgen(), symprec=SYMPREC)
        return analyzer.get_space_group_symbol(), int(analyzer.get_space_group_number())
    except Exception:  # noqa: BLE001 - a symmetry the table cannot show is no reason to fail the screen
        return None, None


def write_candidate_cifs(structures: dict[int, Any], out: Path) -> dict[int, str]:
    """Each candidate's structure as ``cifs/candidate-<index>.cif`` under ``out``; the paths relative to it."""
    from chemgen import io as structure_io

    paths = {}
    for index, system in structures.items():
        relative = f"cifs/candidate-{index}.cif"
        structure_io.write(out / relative, [system.replace(material_id=f"candidate-{index}")])
        paths[index] = relative
    return paths


def _current(generated: Any, relaxation: dict[str, Any]) -> Any:
    relaxed = relaxation.get("relaxed")
    return relaxed if relaxed is not None else generated


@task(name="rank-and-report")
def rank_and_report(systems: list[Any], records: list[dict[str, Any]], relaxed: list[dict[str, Any]],
                    metrics: dict[str, float], out_dir: str, sigma: float | None = None,
                    chemical_system: tuple[str, ...] | None = None) -> dict[str, Any]:
    import math

    import pandas as pd

    from chemgen import io as structure_io
    from chemgen.io import atomic_write
    from chemgen.scoring.hull import load_chgnet_sigma
    from chemgen.scoring.stability import stability_metrics

    out = Path(out_dir)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    by_index = {r["index"]: r for r in relaxed}
    # what a valid candidate is now: relaxed where CHGNet moved it, else as generated
    structures = {record["index"]: _current(systems[record["index"]], by_index.get(record["index"], {}))
                  for record in records if record["valid"]}
    cifs = write_candidate_cifs(structures, out)
    rows = []
    for record in records:
        r = by_index.get(record["index"], {})
        e_hull = r.get("e_above_hull", float("nan"))
        symbol, number = space_group(structures[record["index"]]) if record["index"] in structures else (None, None)
        rows.append({"index": record["index"], "formula": record["formula"], "num_atoms": record["num_atoms"],
                     "valid": record["valid"], "unique": record["unique"],
                     "novelty": record["novelty"], "novel": record["novelty"] == "novel",
                     "e_form_per_atom": r.get("e_form_per_atom"), "e_above_hull": e_hull,
                     "stable": bool(math.isfinite(e_hull) and e_hull <= 0.0),
                     "metastable": bool(math.isfinite(e_hull) and e_hull <= 0.1),
                     "relax_steps": r.get("relax_steps"), "relax_status": r.get("relax_status"),
                     "in_chemical_system": in_chemical_system(systems[record["index"]], chemical_system),
                     "space_group": symbol, "space_group_number": number, "cif": cifs.get(record["index"]),
                     "error": r.get("error") or record.get("reason")})
    table = pd.DataFrame(rows)
    table["space_group_number"] = table.space_group_number.astype("Int64")  # integers, empty where none
    table["sun"] = table.valid & table.unique.fillna(False) & table.novel & table.stable
    table["msun"] = table.valid & table.unique.fillna(False) & table.novel & table.metastable
    ranked = table.sort_values(["msun", "e_above_hull"], ascending=[False, True], na_position="last")
    unique_novel = (table.unique.fillna(False) & table.novel).tolist()
    metrics = {**metrics, **stability_metrics(table.e_above_hull.astype(float).tolist(), len(systems),
                                              sigma if sigma is not None else load_chgnet_sigma(), unique_novel,
                                              sun_prefix="chgnet_mp20+screen")}
    with atomic_write(out / "candidates.csv") as handle:
        ranked.to_csv(handle, index=False)
    winners = [by_index[i]["relaxed"].replace(material_id=f"candidate_{rank}_{table.formula[i]}")
               for rank, i in enumerate(ranked.index) if i in by_index and by_index[i]["relaxed"] is not None
               and ranked.loc[i, "metastable"]]
    if winners:
        structure_io.write(out / "metastable_candidates.cif", winners)
    plots = _plots(table, out)
    with atomic_write(out / "report.md") as handle:
        handle.write(_markdown(ranked, metrics, len(systems), plots, chemical_system))
    return {"metrics": metrics, "out_dir": str(out), "n_metastable_sun": int(table.msun.sum())}


def _plots(table: Any, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chemgen.io import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.5))
    e = table.e_above_hull.dropna()
    ax.hist(e.clip(upper=1.0), bins=30, color="tab:blue")
    ax.axvline(0.0, color="k", lw=1)
    ax.axvline(0.1, color="tab:red", lw=1, ls="--", label="metastable (0.1 eV/atom)")
    ax.set_xlabel("E above MP-20 hull (eV/atom, clipped at 1)")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(out / "e_above_hull.png", "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return ["e_above_hull.png"]


def _markdown(ranked: Any, metrics: dict[str, float], n: int, plots: list[str],
              chemical_system: tuple[str, ...] | None = None) -> str:
    lines = [f"# Crystal screening report ({n} generated)", ""]
    if chemical_system is not None:
        lines += [f"Chemical system: {'-'.join(chemical_system)} (only candidates made of these elements are "
                  "relaxed and ranked).", ""]
    lines += ["Protocols: CDVAE validity, ADiT's uniqueness/novelty against MP-20's training split, CHGNet relaxation, "
              "E_hull on the MP-20 hull (stable <= 0, metastable <= 0.1 eV/atom).", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    lines += ["", "## Top candidates", "", "| rank | formula | E_hull (eV/atom) | S.U.N. | M.S.U.N. |", "|---|---|---|---|---|"]
    for rank, row in enumerate(ranked.head(20).itertuples()):
        lines.append(f"| {rank} | {row.formula} | {row.e_above_hull:.3f} | {row.sun} | {row.msun} |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


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
def crystal_screening(n: int = 20, model: str = "models:/chemgen-adit@champion", seed: int = 0,
                      num_steps: int | None = None, preset: str = "adit", relax_steps: int = 200, fmax: float = 0.1,
                      references_path: str | None = None, out_dir: str | None = None,
                      chunk: int = 32, sigma: float | None = None, workers: int = DEFAULT_WORKERS,
                      data_dir: str | None = None, chemical_system: str | None = None) -> dict[str, Any]:
    """Screen ``n`` generated crystals; see the module docstring. Candidates are relaxed in batches of
    ``chunk``, one task each, ``workers`` tasks at a time. ``sigma``: CHGNet's error for the expected stable
    count (default: the cached held-out estimate, `load_chgnet_sigma`). ``data_dir``: the MP-20 data of the
    hull and the CHGNet fits (default: `chemgen.paths.default_data_dir`). ``chemical_system``: e.g. "Li-Fe-O",
    the elements a candidate must be made of to be relaxed (`parse_chemical_system`; default: any)."""
    elements = parse_chemical_system(chemical_system)  # a typo fails here, before minutes of generation
    progress = FlowProgress(f"generating {n} crystals")
    start = time.perf_counter()
    out = out_dir or str(chemgen_home() / "runs" / f"screen-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}")
    with tracking.run("crystal-screening", tags={"prefect.flow_run_id": str(flow_run.id)}):
        tracking.log_params({"n": n, "model": model, "seed": seed, "preset": preset, "relax_steps": relax_steps,
                             "fmax": fmax, "chunk": chunk, "workers": workers,
                             "chemical_system": "-".join(elements) if elements else "any"})
        # submitted first: on a cold cache its fits (minutes) overlap generation and validity
        energy = load_energy_references.submit(references_path, data_dir, sigma)
        systems = generate(model, n, seed, num_steps)
        progress.update(0.1, f"generated {n} crystals; checking validity, uniqueness, novelty")
        metrics, records = screen_without_energies(systems, preset)
        candidates = [(r["index"], systems[r["index"]]) for r in records
                      if r["valid"] and in_chemical_system(systems[r["index"]], elements)]
        chunks = [candidates[i:i + chunk] for i in range(0, len(candidates), chunk)]  # one task per batch
        progress.update(PROGRESS_RELAX_START, f"{sum(r['valid'] for r in records)} of {n} valid; "
                                              f"relaxing {len(candidates)} in {len(chunks)} chunks")

        def chunk_done(done: int, total: int) -> None:
            share = PROGRESS_RELAX_END - PROGRESS_RELAX_START
            progress.update(PROGRESS_RELAX_START + share * done / total, f"relaxed chunk {done} of {total}")

        # the future itself goes to every task: a Dask runner keeps the hull on its workers, sent once each
        relaxed = [row for rows in bounded_map(relax, [([i for i, _ in c], [s for _, s in c], energy, fmax,
                                                        relax_steps) for c in chunks], workers, chunk_done)
                   for row in rows]
        progress.update(PROGRESS_RELAX_END, "ranking candidates and writing the report")
        summary = rank_and_report(systems, records, relaxed, metrics, out, energy.result()["sigma"], elements)
        tracking.log_metrics({**summary["metrics"], "flow_seconds": time.perf_counter() - start})
        import mlflow

        mlflow.log_artifacts(summary["out_dir"], artifact_path="screening")
        progress.update(1.0, f"done: {summary['n_metastable_sun']} metastable S.U.N. of {n}")
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

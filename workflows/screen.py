"""Crystal screening: generate -> validity -> uniqueness/novelty -> CHGNet relaxation -> E_hull -> S.U.N. ranking.

Relaxations fan out as one Prefect task per candidate; with ``dask=True`` they run on a Dask
cluster (a local one by default, or ``dask_address``). Output: the ranked candidates as CIFs,
a CSV, a Markdown report and E_hull / density plots, all logged to one MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workflows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow, task, unmapped
from prefect.runtime import flow_run

from chemgen import tracking
from chemgen.paths import chemgen_home


@task(name="generate-crystals", retries=1, retry_delay_seconds=1)
def generate(model: str, n: int, seed: int, num_steps: int | None) -> list[Any]:
    from chemgen.generation.jobs import load_model
    from chemgen.generation.records import to_systems

    decoded = load_model(model).generate(n, "crystal", seed=seed, num_steps=num_steps)
    return to_systems(decoded, "mp20")


@task(name="validity-uniqueness-novelty")
def screen_without_energies(systems: list[Any], preset: str) -> tuple[dict[str, float], list[dict[str, Any]]]:
    from chemgen.generation.records import Failure
    from chemgen.scoring.crystals import score_crystals
    from chemgen.scoring.report import training_references

    items = [None if isinstance(s, Failure) else s for s in systems]
    scores = score_crystals(items, references=training_references(), preset=preset)
    return scores.as_dict(), [{**vars(r), "valid": r.valid} for r in scores.records]


@task(name="relax-and-hull", retries=1, retry_delay_seconds=1)
def relax(index: int, system: Any, references_path: str | None, fmax: float, steps: int) -> dict[str, Any]:
    """CHGNet relaxation of one candidate, then formation energy and E_hull on the MP-20 hull."""
    import torch

    from chemgen.atoms import AtomicSystem
    from chemgen.scoring.hull import chgnet_stability, load_chgnet_references, load_mp20_hull

    torch.set_num_threads(1)
    record = chgnet_stability(system.to_pymatgen(), load_mp20_hull(), load_chgnet_references(references_path),
                              fmax=fmax, steps=steps)
    relaxed = AtomicSystem.from_pymatgen(record.structure) if record.structure is not None else None
    return {"index": index, "e_form_per_atom": record.e_form_per_atom, "e_above_hull": record.e_above_hull,
            "relax_steps": record.steps, "error": record.error, "relaxed": relaxed}


@task(name="rank-and-report")
def rank_and_report(systems: list[Any], records: list[dict[str, Any]], relaxed: list[dict[str, Any]],
                    metrics: dict[str, float], out_dir: str) -> dict[str, Any]:
    import math

    import pandas as pd

    from chemgen import io as structure_io
    from chemgen.io import atomic_write
    from chemgen.scoring.hull import stability_rates

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_index = {r["index"]: r for r in relaxed}
    rows = []
    for record in records:
        r = by_index.get(record["index"], {})
        e_hull = r.get("e_above_hull", float("nan"))
        rows.append({"index": record["index"], "formula": record["formula"], "num_atoms": record["num_atoms"],
                     "valid": record["valid"], "unique": record["unique"],
                     "novelty": record["novelty"], "novel": record["novelty"] == "novel",
                     "e_form_per_atom": r.get("e_form_per_atom"), "e_above_hull": e_hull,
                     "stable": bool(math.isfinite(e_hull) and e_hull <= 0.0),
                     "metastable": bool(math.isfinite(e_hull) and e_hull <= 0.1),
                     "relax_steps": r.get("relax_steps"), "error": r.get("error") or record.get("reason")})
    table = pd.DataFrame(rows)
    table["sun"] = table.valid & table.unique.fillna(False) & table.novel & table.stable
    table["msun"] = table.valid & table.unique.fillna(False) & table.novel & table.metastable
    ranked = table.sort_values(["msun", "e_above_hull"], ascending=[False, True], na_position="last")
    rates = stability_rates(table.e_above_hull.fillna(float("nan")).tolist(), n_total=len(systems))
    metrics = {**metrics, **rates, "chgnet_mp20+screen/sun_rate": float(table.sun.sum() / len(systems)),
               "chgnet_mp20+screen/msun_rate": float(table.msun.sum() / len(systems))}
    with atomic_write(out / "candidates.csv") as handle:
        ranked.to_csv(handle, index=False)
    winners = [by_index[i]["relaxed"].replace(material_id=f"candidate_{rank}_{table.formula[i]}")
               for rank, i in enumerate(ranked.index) if i in by_index and by_index[i]["relaxed"] is not None
               and ranked.loc[i, "metastable"]]
    if winners:
        structure_io.write(out / "metastable_candidates.cif", winners)
    plots = _plots(table, out)
    with atomic_write(out / "report.md") as handle:
        handle.write(_markdown(ranked, metrics, len(systems), plots))
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


def _markdown(ranked: Any, metrics: dict[str, float], n: int, plots: list[str]) -> str:
    lines = [f"# Crystal screening report ({n} generated)", "",
             "Protocols: CDVAE validity, ADiT's uniqueness/novelty against MP-20's training split, CHGNet relaxation, "
             "E_hull on the MP-20 hull (stable <= 0, metastable <= 0.1 eV/atom).", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    lines += ["", "## Top candidates", "", "| rank | formula | E_hull (eV/atom) | S.U.N. | M.S.U.N. |", "|---|---|---|---|---|"]
    for rank, row in enumerate(ranked.head(20).itertuples()):
        lines.append(f"| {rank} | {row.formula} | {row.e_above_hull:.3f} | {row.sun} | {row.msun} |")
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


@flow(name="crystal-screening", log_prints=True)
def crystal_screening(n: int = 20, model: str = "models:/chemgen-adit@champion", seed: int = 0,
                      num_steps: int | None = None, preset: str = "adit", relax_steps: int = 200, fmax: float = 0.1,
                      references_path: str | None = None, out_dir: str | None = None) -> dict[str, Any]:
    """Screen ``n`` generated crystals; see the module docstring."""
    start = time.perf_counter()
    out = out_dir or str(chemgen_home() / "runs" / f"screen-{time.strftime('%Y%m%d-%H%M%S')}-{str(flow_run.id)[:8]}")
    with tracking.run("crystal-screening", tags={"prefect.flow_run_id": str(flow_run.id)}):
        tracking.log_params({"n": n, "model": model, "seed": seed, "preset": preset, "relax_steps": relax_steps,
                             "fmax": fmax})
        systems = generate(model, n, seed, num_steps)
        metrics, records = screen_without_energies(systems, preset)
        candidates = [(r["index"], systems[r["index"]]) for r in records if r["valid"]]
        futures = relax.map([i for i, _ in candidates], [s for _, s in candidates], unmapped(references_path),
                           unmapped(fmax), unmapped(relax_steps))
        relaxed = [f.result() for f in futures]
        summary = rank_and_report(systems, records, relaxed, metrics, out)
        tracking.log_metrics({**summary["metrics"], "flow_seconds": time.perf_counter() - start})
        import mlflow

        mlflow.log_artifacts(summary["out_dir"], artifact_path="screening")
    return {**summary, "seconds": time.perf_counter() - start}


def with_dask(flow_fn: Any = crystal_screening, address: str | None = None, n_workers: int = 2) -> Any:
    """The screening flow on a Dask task runner: a local cluster, or the scheduler at ``address``."""
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True})
    return flow_fn.with_options(task_runner=runner)

"""Generated structures as records and files: n samples of a dataset, written (SDF / CIF / XYZ + CSV) and scored.

What ``chemgen sample MODEL``, the nightly flow's sampling task and the sweep call, for any unconditional model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from chemgen.sampling.tables import structure_rows
from chemgen.samples import Failure, split_failures, to_systems


def generate_records(model: Any, dataset: str, n: int, seed: int = 0, batch_size: int = 500,
                     **sampling: Any) -> tuple[list[Any], float]:
    """n records (or `Failure`s) of a dataset in batches seeded seed, seed + 1, ..., and the seconds it took."""
    systems: list[Any] = []
    start = time.perf_counter()
    for i, first in enumerate(range(0, n, batch_size)):
        systems.extend(to_systems(model.generate(min(batch_size, n - first), dataset, seed=seed + i, **sampling),
                                  dataset))
    return systems, time.perf_counter() - start


def sample_to_files(model: Any, dataset: str, n: int, out_dir: str | os.PathLike, seed: int = 0,
                    num_steps: int | None = None, solver: str | None = None, cfg_scale: float | None = None,
                    batch_size: int = 500, score: bool = True, store: str | os.PathLike | None = None,
                    versions: dict[str, str] | None = None, references: Any = None) -> dict[str, Any]:
    """Generate n structures of a dataset (or kind: molecule = qm9, crystal = mp20), write them (SDF + XYZ or
    CIF + XYZ) with a CSV summary, and score them against that dataset's references.

    The references (`chemgen.scoring.report.generated_references`, unless given) are read first: a dataset that was
    never curated leaves out the metrics that need it (novelty, distribution distances) and says so in
    ``result["notes"]``, before any sample is drawn."""
    import pandas as pd

    from chemgen import io as structure_io
    from chemgen.bonds import perceive_bonds
    from chemgen.datasets import resolve_dataset
    from chemgen.scoring import report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, kind = resolve_dataset(dataset)
    if score and references is None:
        references = report.generated_references(dataset, store, (versions or {}).get(dataset), required=False)
    systems, seconds = generate_records(model, dataset, n, seed, batch_size, num_steps=num_steps, solver=solver,
                                        cfg_scale=cfg_scale)
    records = [s for s in systems if not isinstance(s, Failure)]
    files: dict[str, Path] = {}
    if records:
        files["xyz"] = structure_io.write(out_dir / "samples.extxyz", records)
        if kind == "molecule":
            files["sdf"] = structure_io.write(out_dir / "samples.sdf", [perceive_bonds(s, "edm") for s in records])
        else:
            files["cif"] = structure_io.write(out_dir / "samples.cif",
                                              [s.replace(material_id=f"sample_{i}") for i, s in enumerate(records)])
    summary = pd.DataFrame(structure_rows(systems, kind)).drop(columns=["xyz", "cif"])
    result: dict[str, Any] = {"n": n, "dataset": dataset, "seconds": seconds,
                              "samples_per_second": n / max(seconds, 1e-9),
                              "failures": len(systems) - len(records), "files": files,
                              "notes": references.missing if references else []}
    if score:
        metrics, table, scores = report.score_generated(*split_failures(systems), dataset, references=references)
        summary = pd.concat([summary.reset_index(drop=True), table.drop(columns=[c for c in ("index",) if c in table])
                             .add_prefix("score_").reset_index(drop=True)], axis=1)
        result["metrics"] = metrics
        result["report"] = report.save_report(metrics, table, scores, kind, out_dir / "scores",
                                              context={"n": n, "seed": seed, "num_steps": num_steps, "solver": solver})
    from chemgen.io import atomic_write

    with atomic_write(out_dir / "summary.csv") as handle:
        summary.to_csv(handle, index=False)
    files["summary"] = out_dir / "summary.csv"
    return result

"""Sampling settings against quality: classifier-free guidance scale x ODE steps x solver.

Every cell generates the same number of systems of one dataset from the same seeds (so cells differ
only by their settings) and scores them with the reference protocols. The table says which setting
to make the config default; the heat map shows the primary metric per cell.

    chemgen sample sweep --kind qm9 --n 200 --cfg 1 1.5 2 3 4 --steps 25 50 100 --solver euler heun
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRIMARY = {"molecule": "edm/molecule_stability", "crystal": "cdvae/valid"}
SECONDARY = {"molecule": ("edm/atom_stability", "edm/validity", "edm/valid_and_unique"),
             "crystal": ("cdvae/struct_valid", "cdvae/comp_valid", "adit/unique_rate")}


def sampling_sweep(model: Any, dataset: str, n: int, cfg_scales: Sequence[float], steps: Sequence[int],
                   solvers: Sequence[str], seed: int = 0, store: str | os.PathLike | None = None,
                   version: str | None = None, batch_size: int = 500,
                   checkpoint: str | os.PathLike | None = None) -> Any:
    """One row per (solver, steps, cfg_scale): seconds, samples/s, the primary and secondary metrics.

    ``checkpoint`` (a CSV) is rewritten after every cell, and cells it already holds for the same dataset
    and sample count are not run again: an interrupted sweep resumes where it stopped."""
    import pandas as pd

    from chemgen.datasets import resolve_dataset
    from chemgen.io import atomic_write
    from chemgen.sampling.generate import generate_records
    from chemgen.samples import split_failures
    from chemgen.scoring import report

    dataset, kind = resolve_dataset(dataset)
    # read once, before the first cell samples: a dataset never curated fails here, not after minutes of sampling
    references = report.generated_references(dataset, store, version)
    done: dict[tuple[str, int, float], dict[str, Any]] = {}
    if checkpoint is not None and Path(checkpoint).is_file():
        for row in pd.read_csv(checkpoint).to_dict("records"):
            if row.get("dataset") == dataset and row.get("n") == n and row.get("seed") == seed:
                done[(row["solver"], int(row["steps"]), float(row["cfg_scale"]))] = row
    rows = []
    for solver, num_steps, cfg in itertools.product(solvers, steps, cfg_scales):
        if (solver, int(num_steps), float(cfg)) in done:
            rows.append(done[(solver, int(num_steps), float(cfg))])
            continue
        systems, seconds = generate_records(model, dataset, n, seed, batch_size, num_steps=num_steps, solver=solver,
                                            cfg_scale=cfg)
        metrics, _, _ = report.score_generated(*split_failures(systems), dataset, references=references)
        rows.append({"dataset": dataset, "n": n, "seed": seed, "solver": solver, "steps": num_steps, "cfg_scale": cfg,
                     "seconds": seconds, "samples_per_second": n / seconds,
                     **{m: metrics.get(m, float("nan")) for m in (PRIMARY[kind], *SECONDARY[kind])}})
        if checkpoint is not None:
            with atomic_write(checkpoint) as handle:
                pd.DataFrame(rows).to_csv(handle, index=False)
    return pd.DataFrame(rows)


def plot_sweep(table: Any, metric: str, path: str | os.PathLike) -> Path:
    """A heat map of ``metric`` over steps x CFG scale, one panel per solver."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = list(dict.fromkeys(table["solver"]))
    fig, axes = plt.subplots(1, len(solvers), figsize=(4.2 * len(solvers), 3.4), squeeze=False, sharey=True)
    for i, (ax, solver) in enumerate(zip(axes[0], solvers)):
        grid = table[table.solver == solver].pivot(index="steps", columns="cfg_scale", values=metric)
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(grid.shape[1]), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(s) for s in grid.index])
        for (r, c), value in np.ndenumerate(grid.to_numpy()):
            ax.text(c, r, f"{100 * value:.0f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 else "white")
        ax.set(title=solver, xlabel="CFG scale", ylabel="ODE steps" if i == 0 else "")
    fig.colorbar(image, ax=axes[0].tolist(), label=metric)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

"""Leave-one-out validation of the CHGNet stability proxy on MP-20 test rows.

For each row: its DFT E_hull against the MP-20 hull *without its own entry* (the truth, as a
generated crystal of that composition would be judged), and CHGNet's E_hull against the same hull
(relaxed from the DFT geometry with the batched relaxer, formation energy from the fitted elemental
references). Reports precision and recall of CHGNet's stable (E_hull <= 0) and metastable
(<= 0.1 eV/atom) calls against the truth, MAE of E_hull and E_form, and the calibration of the
probabilistic stable count sum_i Phi(-E_hull_i / sigma) for the robust and the RMS sigma. For
contrast it also scores CHGNet single points at the DFT geometry, and the hull with the rows in
it (what the issue measured: half the rows sit exactly on the hull, so the <= 0 call is the sign
of CHGNet's error).

    python bench/validate_stability.py [--rows 600] [--seed 0] [--workers 1] [--out out/validate_stability]
                                       [--reuse] [--write-sigma]

Writes rows.csv (per row), summary.json, e_above_hull_loo.png under --out. ``--reuse`` reads
rows.csv from --out instead of relaxing again; ``--write-sigma`` caches the residual spread as the
sigma `chemgen.scoring.hull.load_chgnet_sigma` serves (the same rows and settings
`build_chgnet_sigma` would use when --rows 600 --seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

THRESHOLDS = {"stable": 0.0, "metastable": 0.1}  # eV/atom
TOLERANCE = 1e-6  # eV/atom: pymatgen leaves ~1e-15 on hull vertices; a row on the hull is stable


def call_scores(truth: np.ndarray, predicted: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision / recall / accuracy of the call ``E_hull <= threshold`` (CHGNet vs DFT)."""
    t, p = truth <= threshold + TOLERANCE, predicted <= threshold + TOLERANCE
    tp = float(np.sum(t & p))
    return {"n_true": float(t.sum()), "n_called": float(p.sum()),
            "precision": tp / p.sum() if p.any() else float("nan"),
            "recall": tp / t.sum() if t.any() else float("nan"),
            "accuracy": float(np.mean(t == p))}


CALIBRATION_BINS = (-np.inf, -0.04, -0.02, -0.01, 0.0, 0.01, 0.02, 0.04, np.inf)  # CHGNet E_hull, eV/atom


def calibration(truth: np.ndarray, predicted: np.ndarray, sigma: float) -> dict[str, object]:
    """How well P_i = Phi(-E_i / sigma) predicts the DFT stable call: expected vs DFT stable count,
    Brier score, log loss, and per bin of CHGNet E_hull the mean P_i beside the DFT stable fraction."""
    from chemgen.scoring.stability import stable_probability

    prob = stable_probability(predicted, sigma)
    stable = (truth <= TOLERANCE).astype(float)
    clipped = np.clip(prob, 1e-12, 1 - 1e-12)
    bins = np.digitize(predicted, CALIBRATION_BINS[1:-1])
    reliability = [{"lo": float(CALIBRATION_BINS[b]), "hi": float(CALIBRATION_BINS[b + 1]), "n": int((bins == b).sum()),
                    "mean_p": float(prob[bins == b].mean()), "dft_stable_fraction": float(stable[bins == b].mean())}
                   for b in range(len(CALIBRATION_BINS) - 1) if (bins == b).any()]
    return {"sigma": sigma, "expected_stable": float(prob.sum()), "dft_stable": float(stable.sum()),
            "brier": float(np.mean((prob - stable) ** 2)),
            "log_loss": float(-np.mean(stable * np.log(clipped) + (1 - stable) * np.log(1 - clipped))),
            "reliability": reliability}


def protocol_scores(truth: np.ndarray, predicted: np.ndarray, e_form_err: np.ndarray) -> dict[str, float]:
    keep = np.isfinite(truth) & np.isfinite(predicted)
    truth, predicted = truth[keep], predicted[keep]
    out: dict[str, float] = {"n": float(keep.sum()), "mae_e_hull": float(np.mean(np.abs(predicted - truth))),
                             "mae_e_form": float(np.nanmean(np.abs(e_form_err[keep])))}
    for name, threshold in THRESHOLDS.items():
        out |= {f"{name}_{k}": v for k, v in call_scores(truth, predicted, threshold).items()}
    return out


def hull_columns(rows: pd.DataFrame, hull: object) -> pd.DataFrame:
    """DFT and CHGNet E_hull per row, against the hull with and without the row's own entry."""
    out = rows.copy()
    formulas, ids = out["pretty_formula"], out["material_id"]
    for column, energy in (("dft", "formation_energy_per_atom"), ("chgnet", "e_form_chgnet"),
                           ("chgnet_sp", "e_form_chgnet_sp")):
        e = out[energy].to_numpy(float)
        out[f"e_hull_{column}_loo"] = [hull.e_above_hull(f, x, exclude=m) if np.isfinite(x) else np.nan
                                       for f, x, m in zip(formulas, e, ids, strict=True)]
        out[f"e_hull_{column}_in_hull"] = [hull.e_above_hull(f, x) if np.isfinite(x) else np.nan
                                           for f, x in zip(formulas, e, strict=True)]
    return out


def summarise(table: pd.DataFrame, sigma: object) -> dict[str, dict[str, float]]:
    dft = table["formation_energy_per_atom"].to_numpy(float)
    relaxed_err = table["e_form_chgnet"].to_numpy(float) - dft
    sp_err = table["e_form_chgnet_sp"].to_numpy(float) - dft
    summary = {
        "loo_relaxed": protocol_scores(table["e_hull_dft_loo"].to_numpy(float),
                                       table["e_hull_chgnet_loo"].to_numpy(float), relaxed_err),
        "loo_single_point": protocol_scores(table["e_hull_dft_loo"].to_numpy(float),
                                            table["e_hull_chgnet_sp_loo"].to_numpy(float), sp_err),
        "in_hull_relaxed": protocol_scores(table["e_hull_dft_in_hull"].to_numpy(float),
                                           table["e_hull_chgnet_in_hull"].to_numpy(float), relaxed_err),
    }
    truth, predicted = table["e_hull_dft_loo"].to_numpy(float), table["e_hull_chgnet_loo"].to_numpy(float)
    keep = np.isfinite(truth) & np.isfinite(predicted)
    for method in ("robust", "rms"):
        summary[f"calibration_{method}"] = calibration(truth[keep], predicted[keep], sigma.relaxed[method])
    summary["sigma"] = {"method": sigma.method, "sigma": sigma.sigma,
                        **{f"relaxed_{k}": v for k, v in sigma.relaxed.items()},
                        **{f"single_point_{k}": v for k, v in sigma.single_point.items()}}
    summary["relaxation"] = {k: float(v) for k, v in table["relax_status"].value_counts().items()}
    summary["relaxation"]["mean_steps"] = float(table["relax_steps"].mean())
    return summary


def print_table(summary: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="CHGNet vs DFT E_hull on MP-20 test rows (precision / recall of the call)")
    for column in ("protocol", "n", "stable P", "stable R", "metastable P", "metastable R",
                   "MAE E_hull", "MAE E_form", "DFT stable", "CHGNet stable"):
        table.add_column(column, justify="right")
    for name in ("loo_relaxed", "loo_single_point", "in_hull_relaxed"):
        s = summary[name]
        table.add_row(name, f"{s['n']:.0f}", f"{s['stable_precision']:.3f}", f"{s['stable_recall']:.3f}",
                      f"{s['metastable_precision']:.3f}", f"{s['metastable_recall']:.3f}",
                      f"{s['mae_e_hull']:.4f}", f"{s['mae_e_form']:.4f}", f"{s['stable_n_true']:.0f}",
                      f"{s['stable_n_called']:.0f}")
    console = Console(width=150)
    console.print(table)
    for method in ("rms", "robust"):
        c = summary[f"calibration_{method}"]
        bins = "  ".join(f"[{r['lo']:g},{r['hi']:g}) {r['mean_p']:.2f}/{r['dft_stable_fraction']:.2f}"
                         for r in c["reliability"])
        console.print(f"sigma {method} = {c['sigma']:.4f} eV/atom: expected stable {c['expected_stable']:.1f} "
                      f"vs DFT {c['dft_stable']:.0f} (LOO), Brier {c['brier']:.4f}, log loss {c['log_loss']:.4f}\n"
                      f"  mean P / DFT stable fraction by CHGNet E_hull bin: {bins}")


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    x, y = table["e_hull_dft_loo"], table["e_hull_chgnet_loo"]
    ax.scatter(x, y, s=6, alpha=0.5)
    lo, hi = -0.5, 0.6
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    for t in THRESHOLDS.values():
        ax.axvline(t, color="grey", ls="--", lw=0.6)
        ax.axhline(t, color="grey", ls="--", lw=0.6)
    outside = int(np.sum((x < lo) | (x > hi) | (y < lo) | (y > hi)))
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="DFT E_hull, leave-one-out (eV/atom)",
           ylabel="CHGNet E_hull, leave-one-out (eV/atom)",
           title=f"MP-20 test rows (n={len(table)}, {outside} outside the axes)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="random MP-20 test rows to validate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("out/validate_stability"))
    parser.add_argument("--reuse", action="store_true", help="read rows.csv from --out instead of relaxing")
    parser.add_argument("--write-sigma", action="store_true", help="cache the sigma these rows give")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(
        "CHEMGEN_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data")))
    args = parser.parse_args()

    import torch

    from chemgen.scoring.hull import (
        MP20Hull,
        StabilitySigma,
        load_chgnet_references,
        relax_mp20_rows,
        sample_mp20_rows,
        sigma_cache_path,
        sigma_source,
    )

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    references = load_chgnet_references(data_dir=args.data_dir)
    if args.reuse:
        rows = pd.read_csv(args.out / "rows.csv")
    else:
        sample = sample_mp20_rows("test", args.rows, args.seed, args.data_dir, references)
        rows = relax_mp20_rows(sample, references, workers=args.workers, batch_size=args.batch_size)
    relax_s = time.perf_counter() - start
    hull = MP20Hull.from_mp20(args.data_dir)
    table = hull_columns(rows, hull)
    table.to_csv(args.out / "rows.csv", index=False)
    sigma = StabilitySigma.from_rows(table, source=sigma_source(len(table), args.seed))
    summary = summarise(table, sigma)
    summary["run"] = {"rows": float(len(table)), "seed": float(args.seed), "workers": float(args.workers),
                      "relax_wall_s": relax_s, "total_wall_s": time.perf_counter() - start,
                      "load_1min": os.getloadavg()[0], "torch_threads": float(torch.get_num_threads())}
    if args.reuse and (args.out / "summary.json").exists():  # keep the timing of the run that relaxed
        summary["relaxation_run"] = json.loads((args.out / "summary.json").read_text()).get(
            "relaxation_run", summary["run"])
    else:
        summary["relaxation_run"] = summary["run"]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(table, args.out / "e_above_hull_loo.png")
    print_table(summary)
    print(f"wall {summary['run']['total_wall_s']:.0f} s (relaxation {relax_s:.0f} s), load {os.getloadavg()}, "
          f"torch threads {torch.get_num_threads()}, workers {args.workers}; files in {args.out}")
    if args.write_sigma:
        path = sigma_cache_path(args.data_dir, references, args.rows, args.seed, sigma.method)
        sigma.to_json(path)
        print(f"sigma {sigma.sigma:.4f} eV/atom ({sigma.method}) written to {path}")


if __name__ == "__main__":
    main()

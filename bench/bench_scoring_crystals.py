"""Time each crystal score for 1k and 10k samples and print a table.

Samples are MP-20 test structures (then val, to reach 10k); references for novelty are MP-20 val +
train_first1000 (10,047 structures). CHGNet relaxation and CrystalNN fingerprints are timed on a few
structures and extrapolated. Torch runs on one thread.

    python bench/bench_scoring_crystals.py [--sizes 1000 10000] [--chgnet 20] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _structures(cifs: pd.Series) -> list:
    from pymatgen.core import Structure

    return [Structure.from_str(c, fmt="cif", primitive=False) for c in cifs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--chgnet", type=int, default=20, help="structures to relax for the CHGNet estimate")
    parser.add_argument("--fingerprints", type=int, default=50, help="structures for the CrystalNN estimate")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(
        "CHEMGEN_DATA_DIR", Path(__file__).resolve().parents[1] / "../shared/data")))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from chemgen.scoring.crystal_novelty import ReducedStructure as _Reduced, ReferenceSet, novel_mask, unique_mask
    from chemgen.scoring.crystal_validity import assess_validity
    from chemgen.scoring.crystal_distribution import fingerprints, matminer_available, wasserstein_metrics
    from chemgen.scoring.hull import MP20Hull

    root = args.data_dir / "mp_20"
    test, val = (pd.read_csv(root / f"{s}.csv.gz") for s in ("test", "val"))
    train = pd.read_csv(root / "train_first1000.csv.gz")
    pool = pd.concat([test, val], ignore_index=True)
    references = pd.concat([val, train], ignore_index=True)
    gt = _structures(test["cif"].iloc[:1000])
    gt_density = [s.density for s in gt]
    gt_nelem = [len(s.composition.elements) for s in gt]
    hull, t_hull = _timed(lambda: MP20Hull.from_mp20(args.data_dir))

    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        table = pool.iloc[:n]
        structures, t_parse = _timed(lambda t=table: _structures(t["cif"]))
        records, t_valid = _timed(lambda s=structures: [assess_validity(i, x)[0] for i, x in enumerate(s)])
        valid = [i for i, r in enumerate(records) if r.valid]
        vs = [structures[i] for i in valid]
        formulas = [records[i].formula for i in valid]
        reduced = [_Reduced(s) for s in vs]
        timings = {"parse CIF (not a metric)": t_parse, "validity (struct + comp)": t_valid}
        for preset in ("cdvae", "mattergen"):
            # The first pass also reduces every sample once (Niggli + primitive); later passes reuse it.
            _, timings[f"uniqueness [{preset}]"] = _timed(lambda p=preset: unique_mask(vs, formulas, p, reduced))
        for preset in ("cdvae", "mattergen"):
            refs = ReferenceSet.from_cifs(references["pretty_formula"], references["cif"])
            _, timings[f"novelty vs 10,047 refs [{preset}]"] = _timed(
                lambda p=preset, r=refs: novel_mask(vs, formulas, r, p, reduced))
        _, timings["Wasserstein density + #elements"] = _timed(lambda: wasserstein_metrics(
            [records[i].density for i in valid], [records[i].n_elements for i in valid], gt_density, gt_nelem))
        _, timings["E_hull from E_form (data hull)"] = _timed(lambda t=table: [
            hull.e_above_hull(f, e) for f, e in zip(t["pretty_formula"], t["formation_energy_per_atom"])])
        rows.append({"n": n, "n_valid": len(valid), **timings})

    estimates: dict[str, float] = {"build MP-20 hull entry table": t_hull}
    if matminer_available():
        sample = gt[: args.fingerprints]
        _, t_fp = _timed(lambda: [fingerprints(s) for s in sample])
        estimates["CrystalNN + Magpie fingerprint / structure"] = t_fp / len(sample)
    if args.chgnet:
        from chgnet.model import StructOptimizer

        from chemgen.scoring.relax import relax_with_chgnet

        optimizer, t_load = _timed(StructOptimizer)
        sample = gt[: args.chgnet]
        results, t_relax = _timed(lambda: [relax_with_chgnet(s, fmax=0.1, steps=200, optimizer=optimizer)
                                           for s in sample])
        estimates["CHGNet load"] = t_load
        estimates["CHGNet relax / structure (fmax 0.1, <=200 steps)"] = t_relax / len(sample)
        estimates["  mean ionic steps"] = float(np.mean([r.steps for r in results]))

    frame = pd.DataFrame(rows).set_index("n").T
    print(f"\ncrystal scoring times in seconds (torch threads = {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs visible)\n")
    print(frame.to_string(float_format=lambda x: f"{x:9.1f}"))
    print("\nper-structure estimates and extrapolations")
    for key, value in estimates.items():
        line = f"  {key:<52s} {value:8.3f}"
        if "/ structure" in key:
            line += "".join(f"   ({n}: {value * n / 60:6.1f} min)" for n in args.sizes)
        print(line)
    if not matminer_available():
        print("  coverage (COV-R/COV-P) not timed: matminer is not installed")


if __name__ == "__main__":
    main()

"""Time each molecule score on real QM9 molecules, one thread.

Usage::

    nice .venv/bin/python bench/bench_scoring_molecules.py --sizes 1000 10000
    nice .venv/bin/python bench/bench_scoring_molecules.py --full-qm9

Molecules are drawn by a fixed seed from EDM's test split; the novelty reference is built
from as many training molecules. Prints one row per step: total seconds and microseconds per
molecule. ``--full-qm9`` instead scores all 130,831 QM9 molecules under both protocols, then
EDM's test split with novelty against SMILES rebuilt from its training split (EDM's
``compute_qm9_smiles``), and prints the scores (the "Data" row of EDM's Table 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads: one thread, as reported

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rdkit import rdBase

from chemgen.bonds import BondPerceptionError, edm_bond_orders, rdkit_determine_bonds
from chemgen.data.qm9 import edm_split, iter_qm9, read_qm9_frame
from chemgen.scoring.molecules import (
    allowed_valence, build_edm_molecule, largest_fragment_smiles, novel_smiles, reference_smiles,
    score_molecules, uniqueness,
)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _edm_validity(systems: list, orders: list[np.ndarray]) -> list[str]:
    from rdkit import Chem

    smiles = []
    for system, o in zip(systems, orders):
        mol = build_edm_molecule(system.atomic_numbers, o)
        try:
            Chem.SanitizeMol(mol)
        except ValueError:
            continue
        smiles.append(largest_fragment_smiles(mol))
    return smiles


def _rdkit_perception(systems: list) -> int:
    failed = 0
    for system in systems:
        try:
            rdkit_determine_bonds(system)
        except BondPerceptionError:
            failed += 1
    return failed


def bench(size: int, frame: Any, seed: int) -> list[tuple[str, float]]:
    split = edm_split()
    rng = np.random.default_rng(seed)
    test_rows = np.sort(rng.choice(split["test"], size, replace=size > split["test"].size))
    train_rows = np.sort(rng.choice(split["train"], size, replace=False))
    rows: list[tuple[str, float]] = []

    seconds, systems = _timed(lambda: [s for _, s in iter_qm9(frame.iloc[test_rows])])
    rows.append(("parse QM9 rows -> AtomicSystem", seconds))
    train = [s for _, s in iter_qm9(frame.iloc[train_rows])]

    seconds, orders = _timed(lambda: [edm_bond_orders(s.atomic_numbers, s.pos) for s in systems])
    rows.append(("edm: bond orders (distance table)", seconds))
    seconds, _ = _timed(lambda: [allowed_valence(s.atomic_numbers, o.sum(axis=1)) for s, o in zip(systems, orders)])
    rows.append(("edm: atom + molecule stability", seconds))
    with rdBase.BlockLogs():
        seconds, valid = _timed(lambda: _edm_validity(systems, orders))
        rows.append(("edm: validity (build, sanitize, SMILES)", seconds))
        seconds, _ = _timed(lambda: uniqueness(valid))
        rows.append(("edm: uniqueness", seconds))
        seconds, reference = _timed(lambda: reference_smiles(train, protocols=("edm",)))
        rows.append((f"edm: training reference ({size} molecules)", seconds))
        seconds, _ = _timed(lambda: novel_smiles(valid, reference["edm"]))
        rows.append(("edm: novelty lookup", seconds))
        seconds, _ = _timed(lambda: _rdkit_perception(systems))
        rows.append(("rdkit: rdDetermineBonds (+ sanitize)", seconds))
    seconds, _ = _timed(lambda: score_molecules(systems, protocols=("edm",)))
    rows.append(("score_molecules, edm only (all scores)", seconds))
    seconds, _ = _timed(lambda: score_molecules(systems, protocols=("rdkit",)))
    rows.append(("score_molecules, rdkit only (all scores)", seconds))
    seconds, _ = _timed(lambda: score_molecules(systems, reference_smiles=reference, protocols=("edm", "rdkit")))
    rows.append(("score_molecules, both (+ edm novelty)", seconds))
    return rows


def full_qm9(frame: Any) -> None:
    """All of QM9, then the test split with novelty against the training split."""
    seconds, systems = _timed(lambda: [s for _, s in iter_qm9(frame)])
    failed = [k for k, s in enumerate(systems) if isinstance(s, Exception)]
    print(f"parsed {len(systems)} molecules ({len(failed)} unreadable) in {seconds:.1f} s")
    seconds, scores = _timed(lambda: score_molecules(systems))
    print(f"\nall {len(systems)} molecules, both protocols: {seconds:.1f} s")
    _print_scores(scores.as_dict())
    split = edm_split()
    seconds, reference = _timed(lambda: reference_smiles([systems[k] for k in split["train"]]))
    sizes = ", ".join(f"{p} {len(r)}" for p, r in reference.items())
    print(f"\ntraining reference from {split['train'].size} molecules ({sizes} SMILES): {seconds:.1f} s")
    seconds, test = _timed(lambda: score_molecules([systems[k] for k in split["test"]], reference_smiles=reference))
    print(f"\ntest split ({split['test'].size} molecules), novelty against train: {seconds:.1f} s")
    _print_scores(test.as_dict())


def _print_scores(scores: dict[str, float]) -> None:
    for key, value in scores.items():
        print(f"  {key:28s} {value:10.0f}" if key.endswith("num_molecules") else f"  {key:28s} {100 * value:9.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-qm9", action="store_true", help="score all of QM9 instead of timing steps")
    args = parser.parse_args()
    frame = read_qm9_frame()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, single process")
    if args.full_qm9:
        full_qm9(frame)
        return
    results = {size: bench(size, frame, args.seed) for size in args.sizes}
    header = f"{'step':44s}" + "".join(f" | {f'{n} mols: s':>13s} {'us/mol':>8s}" for n in args.sizes)
    print(header)
    print("-" * len(header))
    steps = [name.replace(f"({args.sizes[0]} molecules)", "(as many)") for name, _ in results[args.sizes[0]]]
    for k, step in enumerate(steps):
        cells = "".join(f" | {results[n][k][1]:13.3f} {1e6 * results[n][k][1] / n:8.1f}" for n in args.sizes)
        print(f"{step:44s}{cells}")


if __name__ == "__main__":
    main()

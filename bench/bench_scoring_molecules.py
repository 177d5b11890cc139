"""Time each molecule score on real QM9 molecules, one thread.

Usage::

    nice .venv/bin/python bench/bench_scoring_molecules.py --sizes 1000 10000
    nice .venv/bin/python bench/bench_scoring_molecules.py --full-qm9
    nice .venv/bin/python bench/bench_scoring_molecules.py --noise --sizes 500

Molecules are drawn by a fixed seed from EDM's test split; the novelty reference is built
from as many training molecules. Prints one row per step: total seconds and microseconds per
molecule. ``--full-qm9`` instead scores all 130,831 QM9 molecules under both protocols, then
EDM's test split with novelty against SMILES rebuilt from its training split (EDM's
``compute_qm9_smiles``), and prints the scores (the "Data" row of EDM's Table 1). ``--noise``
instead adds Gaussian noise of 0, 0.05, 0.10 and 0.16 Angstrom RMS displacement to real test
molecules and prints raw ``edm`` against ``edm_mmff`` (relaxed) scores and the time to relax.
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
from chemgen.bonds import allowed_valence
from chemgen.scoring.molecules import build_edm_molecule, largest_fragment_smiles, novel_smiles, reference_smiles, score_molecules, uniqueness
from chemgen.scoring.relax_molecules import relax_molecule

NOISE_RMSD = (0.0, 0.05, 0.10, 0.16)  # Angstrom, RMS displacement per atom


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


def add_noise(systems: list, rmsd: float, rng: np.random.Generator) -> list:
    """Each atom displaced by isotropic Gaussian noise whose RMS length is ``rmsd`` Angstrom."""
    return [s.replace(pos=s.pos + rng.normal(0.0, rmsd / np.sqrt(3), s.pos.shape)) for s in systems]


def noise_table(size: int, frame: Any, seed: int) -> None:
    """Raw EDM against edm_mmff on noisy real QM9 test molecules, and the cost of relaxing."""
    rows = np.sort(np.random.default_rng(seed).choice(edm_split()["test"], size, replace=False))
    systems = [s for _, s in iter_qm9(frame.iloc[rows])]
    rng = np.random.default_rng(seed)
    print(f"{size} QM9 test molecules (seed {seed}); edm = raw coordinates, edm_mmff = relaxed, then EDM")
    print(f"{'noise A':>8s} | {'atom stab raw/mmff %':>20s} | {'mol stab raw/mmff %':>20s} | {'valid raw/mmff %':>17s}"
          f" | {'relaxed %':>9s} | {'not conv':>8s} | {'ms/mol':>6s} | {'worst ms':>8s}")
    for rmsd in NOISE_RMSD:
        noisy = add_noise(systems, rmsd, rng)
        times, relaxations = [], []
        with rdBase.BlockLogs():
            for system in noisy:
                seconds, (_, relaxation) = _timed(lambda: relax_molecule(system))
                times.append(seconds)
                relaxations.append(relaxation)
        scores = score_molecules(noisy, protocols=("edm", "edm_mmff"))
        m = scores.as_dict()
        cells = [f"{100 * m[f'edm/{k}']:8.2f} / {100 * m[f'edm_mmff/{k}']:6.2f}"
                 for k in ("atom_stability", "molecule_stability", "validity")]
        not_converged = sum(r.relaxed and not r.converged for r in relaxations)
        print(f"{rmsd:8.2f} | {cells[0]:>20s} | {cells[1]:>20s} | {cells[2]:>17s} | {100 * m['edm_mmff/relaxed']:9.1f}"
              f" | {not_converged:8d} | {1e3 * np.mean(times):6.1f} | {1e3 * max(times):8.1f}")
        failed = [r.failure for r in relaxations if not r.relaxed]
        raw_stable_failed = int((scores["edm"].molecule_stable & ~scores["edm_mmff"].relaxed).sum())
        if failed:
            print(f"         not relaxed: {len(failed)} ({raw_stable_failed} of them stable on raw coordinates),"
                  f" e.g. {failed[0][:90]}")


def _print_scores(scores: dict[str, float]) -> None:
    for key, value in scores.items():
        print(f"  {key:28s} {value:10.0f}" if key.endswith("num_molecules") else f"  {key:28s} {100 * value:9.2f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-qm9", action="store_true", help="score all of QM9 instead of timing steps")
    parser.add_argument("--noise", action="store_true", help="raw edm vs edm_mmff on noisy QM9 (first of --sizes)")
    args = parser.parse_args()
    frame = read_qm9_frame()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, single process")
    if args.full_qm9:
        full_qm9(frame)
        return
    if args.noise:
        noise_table(args.sizes[0], frame, args.seed)
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

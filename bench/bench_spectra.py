"""Molecules per hour per core for the QM9 xTB spectra, and where the time goes.

Usage::

    .venv/bin/python bench/bench_spectra.py --molecules 40 --start 20000

One process, one thread (OMP_NUM_THREADS=1, as the curation workers run). Molecules are taken from
the computation order at ``--start`` (train-split molecules by default, so the bench does not repeat
the test molecules already committed). Prints the load average beside the timings: on a shared
2-core machine a busy neighbour slows a single-threaded worker little, a second thread a lot.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy and tblite load

import argparse
import time

import numpy as np

from chemgen.spectra.curation import make_molecules
from chemgen.spectra.compute import SpectraFailure, SpectraSettings, compute_spectrum
from chemgen.spectra.vibrations import harmonic_analysis
from chemgen.spectra.xtb import XtbPoint, XtbSettings, optimize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=40)
    parser.add_argument("--start", type=int, default=20_000, help="first position in the computation order")
    args = parser.parse_args()

    molecules = make_molecules(range(args.start, args.start + args.molecules))
    load_before = os.getloadavg()[0]
    seconds, atoms, failures = [], [], 0
    parts = {"optimisation": 0.0, "hessian + IR": 0.0, "raman (13 field gradients)": 0.0}
    settings = SpectraSettings()
    for m in molecules:
        numbers, positions = np.array(m.numbers), np.array(m.positions)
        start = time.perf_counter()
        try:
            compute_spectrum(numbers, positions, settings)
        except SpectraFailure:
            failures += 1
        seconds.append(time.perf_counter() - start)
        atoms.append(len(numbers))
        # The same molecule again, part by part (from the relaxed geometry; no saddle retries).
        t0 = time.perf_counter()
        relaxed, _, _ = optimize(numbers, positions, settings.xtb)
        t1 = time.perf_counter()
        harmonic_analysis(numbers, relaxed, XtbPoint(numbers, relaxed, XtbSettings()), None)
        t2 = time.perf_counter()
        parts["optimisation"] += t1 - t0
        parts["hessian + IR"] += t2 - t1
    total_parts = sum(parts.values())
    # Raman time = full molecule time minus its optimisation and Hessian (measured separately above).
    parts["raman (13 field gradients)"] = max(sum(seconds) - total_parts, 0.0)
    load_after = os.getloadavg()[0]
    per = np.array(seconds)
    print(f"molecules {len(per)} (order positions {args.start}..{args.start + len(per) - 1}), "
          f"mean {np.mean(atoms):.1f} atoms, failures {failures}")
    print(f"seconds/molecule: mean {per.mean():.2f}, median {np.median(per):.2f}, max {per.max():.2f}")
    print(f"molecules/hour/core: {3600 / per.mean():,.0f}")
    for name, value in parts.items():
        print(f"  {name:28s} {value / len(per):.2f} s/molecule ({100 * value / per.sum():.0f} %)")
    print(f"load average (1 min) before/after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} cores; "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")


if __name__ == "__main__":
    main()

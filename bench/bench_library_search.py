"""Seconds per library search on one core, at the size of the complete QM9 library (130,831 molecules).

Usage::

    .venv/bin/python bench/bench_library_search.py --queries 30 --molecules 130831

The spectra store may hold fewer molecules than ``--molecules``: its index's feature rows are then repeated
until there are that many (the search's cost is the matrix products over every row and does not depend on
which spectra the rows hold), so the time is that of a full library. Queries are test-split molecules' IR
and Raman spectra made to look measured (`chemgen.elucidation.distortion`, five stretches of the wavenumber
axis each), searched with IR, Raman and both; the filters (formula) are timed too. One thread.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy loads: the search is timed on one core

import argparse
import time

import numpy as np

from chemgen.elucidation.comparison import Comparison, query_features
from chemgen.elucidation.evaluation import COLUMNS, test_molecules
from chemgen.elucidation.distortion import measured_like
from chemgen.elucidation.library import SpectralLibrary
from chemgen.spectra.curation import default_folder


def tiled(array: np.ndarray, rows: int) -> np.ndarray:
    return np.resize(array, (rows, *array.shape[1:])) if len(array) < rows else array[:rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--molecules", type=int, default=130_831)
    parser.add_argument("--start", type=int, default=2000, help="store position of the first test query")
    args = parser.parse_args()
    folder = default_folder()
    comparison = Comparison()
    start = time.perf_counter()
    library = SpectralLibrary.open(folder, comparison)
    print(f"opened {library.name}: {len(library):,} molecules in {time.perf_counter() - start:.2f} s")
    rows = args.molecules
    # the same index at the full size: features, norms and metadata repeated (filters read the metadata)
    library.features = {m: tiled(np.asarray(f), rows) for m, f in library.features.items()}
    library.norms2 = {m: tiled(np.asarray(n), rows) for m, n in library.norms2.items()}
    library.meta = {k: tiled(np.asarray(v), rows) for k, v in library.meta.items()}
    queries = list(test_molecules(folder, args.start, args.queries))
    rng = np.random.default_rng(0)
    for modalities in (("ir",), ("raman",), ("ir", "raman")):
        times, formula_times = [], []
        for row in queries:
            query = {m: query_features(*measured_like(np.asarray(row["frequencies_cm1"]), np.asarray(row[COLUMNS[m]]),
                                                      rng), comparison) for m in modalities}
            t = time.perf_counter()
            hits = library.search(query, top_k=10)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            library.search(query, top_k=10, formula=hits[0].formula)
            formula_times.append(time.perf_counter() - t)
        print(f"{'+'.join(modalities):9s} over {rows:,} molecules: {np.mean(times):.3f} s per query "
              f"(max {np.max(times):.3f}); with a formula {np.mean(formula_times):.3f} s ({len(queries)} queries)")


if __name__ == "__main__":
    main()

"""How well the library search elucidates held-out molecules, and the calibration of its confidence.

Queries are molecules of the spectra store's test split (EDM's, never fitted on): their computed IR (and Raman)
spectra, either as the store has them (``--as computed``) or made to look measured (``--as measured``:
`chemgen.elucidation.distortion`, seeded per query). Each query is searched in the library with the molecule in
it, or with it removed (``--exclude-truth``: the library then cannot name it, and the mean Tanimoto of the top
candidate to the truth says how close it gets), with or without its formula, with the comparison for measured
spectra or the plain cosine (``--plain``).

    python -m chemgen.elucidation.evaluation run --as measured --queries 300 --start 1000 [--formula] \\
        [--exclude-truth] [--plain] [--modalities ir] --out results.json
    python -m chemgen.elucidation.evaluation calibrate --queries 600 --start 0 --check-start 1000 \\
        --out chemgen/elucidation/calibration.json
    python -m chemgen.elucidation.evaluation pooled --as computed --modalities ir,raman --exclude-truth \\
        --queries 10 --start 2000 --samples 24 --steps 100 --out pooled.json

``pooled`` runs every source of `chemgen.elucidation.pooling` (the library and DiffSpectra, its samples' spectra
computed with GFN2-xTB) and scores, on the same queries, the library alone, the generator alone (its candidates
ordered by similarity) and the pooled ranking; ``--model`` names a lineage (default: the shipped one).

Queries are taken in the store's order from ``--start`` (test molecules fill positions 0-2,999), every one with
spectra; ``calibrate`` fits on [start, start + queries) and checks on the same number from ``--check-start``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.elucidation.comparison import Comparison, query_features
from chemgen.elucidation.distortion import measured_like
from chemgen.elucidation.identity import hill_formula
from chemgen.spectra.broadening import broaden

COLUMNS = {"ir": "ir_km_mol", "raman": "raman_a4_amu"}


@dataclass(frozen=True)
class QueryResult:
    inchikey: str
    rank: int | None               # of the truth among the top candidates (None: not among them)
    top1_similarity: float
    margin: float
    tanimoto_top1: float
    seconds: float


def test_molecules(folder: Path, start: int, count: int) -> Iterator[dict[str, Any]]:
    """Test-split molecules with spectra, in the store's order from position ``start``."""
    import pyarrow.parquet as pq

    from chemgen.spectra import shards

    found = 0
    for info in shards.scan(folder):
        if info.end <= start:
            continue
        for row in pq.read_table(folder / info.file).to_pylist():
            if row["order"] < start or row["failure"] is not None or row["split"] != "test":
                continue
            yield row
            found += 1
            if found >= count:
                return


def tanimoto(smiles_a: str, smiles_b: str) -> float:
    from rdkit import Chem, DataStructs, rdBase
    from rdkit.Chem import rdFingerprintGenerator

    with rdBase.BlockLogs():
        a, b = Chem.MolFromSmiles(smiles_a), Chem.MolFromSmiles(smiles_b)
    if a is None or b is None:
        return 0.0
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    return float(DataStructs.TanimotoSimilarity(generator.GetFingerprint(a), generator.GetFingerprint(b)))


def query_spectra(row: dict[str, Any], modalities: Sequence[str], measured: bool, seed: int
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for kind in modalities:
        if measured:
            out[kind] = measured_like(np.asarray(row["frequencies_cm1"]), np.asarray(row[COLUMNS[kind]]), rng)
        else:
            values = broaden(row["frequencies_cm1"], row[COLUMNS[kind]], kind)
            out[kind] = (values, np.ones(values.shape, dtype=bool))
    return out


def evaluate(library: Any, rows: Sequence[dict[str, Any]], comparison: Comparison, *, modalities=("ir",),
             measured: bool = True, formula: bool = False, exclude_truth: bool = False, top_k: int = 10,
             seed: int = 0) -> list[QueryResult]:
    """One `QueryResult` per query (module docstring)."""
    from ase.data import chemical_symbols

    results = []
    for i, row in enumerate(rows):
        spectra = query_spectra(row, modalities, measured, seed + i)
        start = time.perf_counter()
        query = {k: query_features(v, c, comparison) for k, (v, c) in spectra.items()}
        wanted = hill_formula(Counter(chemical_symbols[z] for z in row["atomic_numbers"])) if formula else None
        hits = library.search(query, top_k=top_k, formula=wanted,
                              exclude=[row["inchikey"]] if exclude_truth else ())
        seconds = time.perf_counter() - start
        keys = [h.inchikey for h in hits]
        rank = keys.index(row["inchikey"]) + 1 if row["inchikey"] in keys else None
        top1 = hits[0].similarity if hits else 0.0
        margin = hits[0].similarity - hits[1].similarity if len(hits) > 1 else 0.0
        results.append(QueryResult(row["inchikey"], rank, float(top1), float(margin),
                                   tanimoto(row["smiles"], hits[0].smiles) if hits else 0.0, seconds))
    return results


def evaluate_pooled(rows: Sequence[dict[str, Any]], folder: Path, *, modalities=("ir", "raman"),
                    measured: bool = False, exclude_truth: bool = True, model: Any = None,
                    model_options: dict[str, Any] | None = None, top_k: int = 10, seed: int = 0
                    ) -> dict[str, list[QueryResult]]:
    """{"library", "model", "pooled": one `QueryResult` per query}: one pooled search per query, read three ways."""
    from chemgen.elucidation.pooling import pool
    from chemgen.elucidation.generator import load_elucidator

    elucidator = load_elucidator(model)
    out: dict[str, list[QueryResult]] = {"library": [], "model": [], "pooled": []}
    for i, row in enumerate(rows):
        spectra = query_spectra(row, modalities, measured, seed + i)
        start = time.perf_counter()
        found = pool(spectra, ["library", "model"], top_k=10 * top_k, library_folder=folder, model=elucidator,
                     model_options=model_options, exclude=[row["inchikey"]] if exclude_truth else ())
        seconds = time.perf_counter() - start
        scored = [c for c in found.candidates if c.similarity is not None]
        for name, keep in (("library", lambda c: any(s.startswith("library") for s in c.sources)),
                           ("model", lambda c: "model" in c.sources), ("pooled", lambda c: True)):
            ranked = [c for c in scored if keep(c)][:top_k]
            keys = [c.inchikey for c in ranked]
            rank = keys.index(row["inchikey"]) + 1 if row["inchikey"] in keys else None
            top1 = ranked[0].similarity if ranked else 0.0
            margin = ranked[0].similarity - ranked[1].similarity if len(ranked) > 1 else 0.0
            out[name].append(QueryResult(row["inchikey"], rank, float(top1), float(margin),
                                         tanimoto(row["smiles"], ranked[0].smiles) if ranked else 0.0, seconds))
        print(f"query {i + 1} of {len(rows)}: {seconds:.0f} s; " + ", ".join(
            f"{name} rank {results[-1].rank}" for name, results in out.items()), flush=True)
    return out


def summarise(results: Sequence[QueryResult]) -> dict[str, float]:
    n = len(results)
    return {"queries": n,
            "top1": sum(r.rank == 1 for r in results) / n,
            "top10": sum(r.rank is not None and r.rank <= 10 for r in results) / n,
            "mean_tanimoto_top1": float(np.mean([r.tanimoto_top1 for r in results])),
            "seconds_per_query": float(np.mean([r.seconds for r in results]))}


# ---------------------------------------------------------------------------- calibration
def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iterations: int = 50
                 ) -> tuple[np.ndarray, float]:
    """Weights and bias of P(label) = sigmoid(features @ w + b), by Newton's method with a small ridge."""
    x = np.column_stack([features, np.ones(len(features))])
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (p - labels) + l2 * np.r_[w[:-1], 0.0]
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0.0])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w[:-1], float(w[-1])


def reliability(probabilities: np.ndarray, labels: np.ndarray, edges=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0001)
                ) -> list[dict[str, float]]:
    """Per band of predicted probability: queries, mean prediction, observed rate."""
    bands = []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (probabilities >= low) & (probabilities < high)
        if inside.any():
            bands.append({"from": low, "to": min(high, 1.0), "queries": int(inside.sum()),
                          "predicted": float(probabilities[inside].mean()), "observed": float(labels[inside].mean())})
    return bands


def calibrate(library: Any, fit_rows: Sequence[dict], check_rows: Sequence[dict], comparison: Comparison,
              provenance: str) -> dict[str, Any]:
    """Logistic models of P(top-1 right | similarity, margin), without and with the formula, fitted on half-in,
    half-out-of-library measured-like queries, with their reliability on other held-out queries."""
    out: dict[str, Any] = {"provenance": {"queries": provenance, "comparison": asdict(comparison)}}
    for name, formula in (("no_formula", False), ("formula", True)):
        def records(rows: Sequence[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
            half = len(rows) // 2
            results = (evaluate(library, rows[:half], comparison, formula=formula, seed=seed)
                       + evaluate(library, rows[half:], comparison, formula=formula, exclude_truth=True,
                                  seed=seed + half))
            features = np.array([[r.top1_similarity, r.margin] for r in results])
            labels = np.array([r.rank == 1 for r in results], dtype=np.float64)
            return features, labels

        features, labels = records(fit_rows, 0)
        weights, bias = fit_logistic(features, labels)
        check_features, check_labels = records(check_rows, 100_000)
        predicted = 1.0 / (1.0 + np.exp(-(check_features @ weights + bias)))
        out[name] = {"weights": weights.tolist(), "bias": bias, "fit_queries": len(labels),
                     "fit_right": float(labels.mean()), "check_queries": len(check_labels),
                     "reliability": reliability(predicted, check_labels),
                     "brier": float(np.mean((predicted - check_labels) ** 2))}
    return out


# ---------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    from chemgen.elucidation.library import SpectralLibrary
    from chemgen.io import atomic_write
    from chemgen.spectra.curation import default_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("run", "calibrate", "pooled"))
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--start", type=int, default=1000)
    parser.add_argument("--check-start", type=int, default=1000)
    parser.add_argument("--as", dest="kind", choices=("measured", "computed"), default="measured")
    parser.add_argument("--formula", action="store_true")
    parser.add_argument("--exclude-truth", action="store_true")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--modalities", default="ir")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--model", default=None, help="pooled: a DiffSpectra lineage (default: the shipped one)")
    parser.add_argument("--samples", type=int, default=24, help="pooled: samples per query")
    parser.add_argument("--steps", type=int, default=100, help="pooled: ancestral steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    folder = args.store or default_folder()
    comparison = Comparison.plain() if args.plain else Comparison()
    library = SpectralLibrary.open(folder, comparison)
    if args.command == "pooled":
        rows = list(test_molecules(folder, args.start, args.queries))
        pooled = evaluate_pooled(rows, folder, modalities=tuple(args.modalities.split(",")),
                                 measured=args.kind == "measured", exclude_truth=args.exclude_truth, model=args.model,
                                 model_options={"num_samples": args.samples, "num_steps": args.steps, "seed": 0})
        result = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "store")},
                  "library": library.describe(), "metrics": {k: summarise(v) for k, v in pooled.items()}}
    elif args.command == "calibrate":
        fit_rows = list(test_molecules(folder, args.start, args.queries))
        check_rows = list(test_molecules(folder, args.check_start, args.queries))
        provenance = (f"{len(fit_rows)} test-split molecules from position {args.start} (fit) and {len(check_rows)} "
                      f"from {args.check_start} (check) of {library.name} ({len(library):,} molecules, "
                      f"{library.content_hash[:12]}), IR made to look measured, half not in the library")
        result = calibrate(library, fit_rows, check_rows, comparison, provenance)
    else:
        rows = list(test_molecules(folder, args.start, args.queries))
        results = evaluate(library, rows, comparison, modalities=tuple(args.modalities.split(",")),
                           measured=args.kind == "measured", formula=args.formula, exclude_truth=args.exclude_truth)
        result = {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "store")},
                  "library": library.describe(), "metrics": summarise(results)}
    with atomic_write(args.out) as handle:
        json.dump(result, handle, indent=1)
        handle.write("\n")
    print(json.dumps(result.get("metrics", {k: v for k, v in result.items() if k != "provenance"}), indent=1))


if __name__ == "__main__":
    main()

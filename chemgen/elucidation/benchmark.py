"""DiffSpectra's structure-elucidation benchmark on held-out test molecules of the spectra store.

The protocol is DiffSpectra's (``compute_metrics.py``): each test molecule's computed spectra are the query,
the model samples ``num_samples`` molecules with the molecule's true atom count, the samples are grouped by
structure and ranked by how often they were sampled (`chemgen.elucidation.ranking`), and the ranking is
scored by top-k exact-structure accuracy and the top-1 Tanimoto similarity (`chemgen.elucidation.metrics`).

Three steps, so that the expensive one runs where the compute is:

1. `query_pack` (CPU, RDKit): a seeded subset of the store's ``test`` split as a spectra `TensorPack`
   (graphs perceived and checked as for training), saved beside the training packs;
2. `chemgen.models.diffspectra.candidates.sample_candidates` (torch only, so it runs on a GPU machine after
   training: `chemgen.training.standalone --benchmark`): the candidates' graphs for each modality setting
   (IR + Raman, IR only, Raman only: SpecFormer's ``present`` mask), written as plain tensors;
3. `score_candidates` (CPU, RDKit): decode, rank, score; optionally re-rank the first queries' candidates
   by the similarity of their GFN2-xTB spectra to the query (`chemgen.elucidation.rerank`), which costs
   seconds per candidate, and report the same queries without re-ranking beside them.

    python -m chemgen.elucidation.benchmark queries --out .packs/diffspectra/test.pt --num 200
    python -m chemgen.elucidation.benchmark sample --model models/weights/diffspectra-cpu \\
        --queries .packs/diffspectra/test.pt --out runs/bench/candidates.pt --samples 10 --steps 1000
    python -m chemgen.elucidation.benchmark score runs/bench/candidates.pt --queries .packs/diffspectra/test.pt \\
        --rerank 30 --out runs/bench/metrics.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from chemgen.data.tensors import TensorPack
from chemgen.errors import UsageError
from chemgen.models.diffspectra.candidates import SETTINGS, load_candidates, sample_candidates, save_candidates



# ---------------------------------------------------------------------------- 1. queries (CPU, RDKit)
def query_pack(folder: str | os.PathLike | None = None, num_queries: int = 200, seed: int = 0) -> TensorPack:
    """``num_queries`` molecules of the store's test split (all of them if fewer), drawn with ``seed`` from its
    first molecules: the store follows EDM's split, itself a random permutation, so these are a random sample
    and only they need their graphs perceived (about 30 ms a molecule)."""
    from chemgen.models.diffspectra.data import spectra_pack

    if num_queries < 1:
        raise UsageError(f"num_queries must be positive, got {num_queries}")
    pack, _ = spectra_pack(folder, split="test", limit=num_queries + num_queries // 5)   # ~4 % are left out
    order = torch.randperm(len(pack), generator=torch.Generator().manual_seed(seed))[:num_queries]
    return pack.subset(order.sort().values)


# ---------------------------------------------------------------------------- 3. scoring (CPU, RDKit)
def truth_molecules(queries: TensorPack) -> list:
    """Each query's own molecule (its perceived graph and geometry) as an RDKit Mol."""
    from chemgen.models.diffspectra.graphs import ATOM_ELEMENTS, graph_to_mol

    index = torch.full((max(ATOM_ELEMENTS) + 1,), -1, dtype=torch.long)
    index[torch.tensor(ATOM_ELEMENTS)] = torch.arange(len(ATOM_ELEMENTS))
    mols = []
    for q in range(len(queries)):
        start, stop = int(queries.offsets[q]), int(queries.offsets[q + 1])
        n = stop - start
        mol = graph_to_mol(queries.pos[start:stop], index[queries.atomic_numbers[start:stop].long()],
                           queries.extras["atom/charge"][start:stop].long(),
                           queries.extras["atom/bonds"][start:stop, :n].long())
        if mol is None:
            raise UsageError(f"test molecule {int(queries.extras['system/qm9_index'][q])} does not decode")
        mols.append(mol)
    return mols


def _decoded(graphs: Mapping[str, torch.Tensor], num_queries: int, num_samples: int) -> list[list]:
    from chemgen.models.diffspectra.graphs import MolGraphs, graphs_to_mols

    mols = graphs_to_mols(MolGraphs(graphs["pos"], graphs["atom_types"].long(), graphs["charges"].long(),
                                    graphs["bonds"].long(), graphs["mask"]))
    return [mols[q * num_samples:(q + 1) * num_samples] for q in range(num_queries)]


def score_candidates(candidates: Mapping[str, Any], queries: TensorPack, top_k: int = 10, rerank_queries: int = 0,
                     compute_fn: Callable | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{setting: metrics} (top-1, top-k, mean top-1 Tanimoto, valid fraction over all queries), and for the
    first ``rerank_queries`` queries the same metrics without and with re-ranking by computed-spectrum
    similarity (``compute_fn``: `chemgen.elucidation.rerank.computed_spectra`, GFN2-xTB)."""
    from chemgen.elucidation.identity import canonical_key
    from chemgen.elucidation.metrics import elucidation_metrics
    from chemgen.elucidation.ranking import rank_candidates
    from chemgen.elucidation.rerank import computed_spectra, rerank

    if not torch.equal(candidates["qm9_index"], queries.extras["system/qm9_index"]):
        raise UsageError("the candidates were sampled for other queries than this query pack holds")
    truths = truth_molecules(queries)
    keys = [canonical_key(m) for m in truths]
    ks = (1, top_k) if top_k != 1 else (1,)
    n, per = len(queries), int(candidates["num_samples"])
    results: dict[str, Any] = {"num_queries": n, "num_samples": per, "num_steps": int(candidates["num_steps"]),
                               "top_k": top_k, "settings": {}}
    for setting, graphs in candidates["settings"].items():
        samples = _decoded(graphs, n, per)
        rankings = [rank_candidates(s, None, top_k) for s in samples]
        metrics = elucidation_metrics(keys, rankings, truths, ks)
        metrics["valid_samples"] = sum(r.num_valid for r in rankings) / (n * per)
        entry = {"metrics": metrics}
        if rerank_queries:
            r = min(rerank_queries, n)
            spectra = _numpy_spectra(queries, setting)
            reranked = []
            for q in range(r):
                query = {m: spectra[m][q] for m in SETTINGS[setting]}
                reranked.append(rerank(rankings[q], query, compute_fn or computed_spectra))
                if log:
                    log(f"{setting}: re-ranked query {q + 1}/{r}")
            entry["first_queries"] = r
            entry["without_rerank"] = elucidation_metrics(keys[:r], rankings[:r], truths[:r], ks)
            entry["with_rerank"] = elucidation_metrics(keys[:r], reranked, truths[:r], ks)
            entry["rerank_failures"] = int(sum(c.failure is not None for lst in reranked for c in lst))
        results["settings"][setting] = entry
        if log:
            log(f"{setting}: " + json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return results


def _numpy_spectra(queries: TensorPack, setting: str) -> dict[str, Any]:
    """The setting's query spectra as (Q, 3501) float64 arrays, for comparing with computed spectra."""
    from chemgen.models.diffspectra.data import broaden_sticks

    frequencies = queries.extras["system/frequencies"].double()
    return {m: broaden_sticks(frequencies, queries.extras[f"system/{m}"].double()).numpy()
            for m in SETTINGS[setting]}


GATE_SETTING = "ir+raman"


def run_benchmark(model: Any, num_queries: int, num_samples: int, num_steps: int | None = None,
                  out_dir: str | os.PathLike | None = None, top_k: int = 10, seed: int = 0) -> dict[str, float]:
    """The nightly flow's evaluation of one DiffSpectra: the first ``num_queries`` test queries (IR + Raman),
    ``num_samples`` candidates each, ranked and scored; flat ``elucidation/...`` metrics for the gate. The
    candidates and the full results go to ``out_dir`` when given."""
    queries = query_pack(num_queries=num_queries, seed=seed)
    candidates = sample_candidates(model, queries, (GATE_SETTING,), num_samples, num_steps, seed)
    results = score_candidates(candidates, queries, top_k)
    if out_dir is not None:
        from chemgen.io import atomic_write

        save_candidates(Path(out_dir) / "candidates.pt", candidates)
        with atomic_write(Path(out_dir) / "benchmark.json") as handle:
            handle.write(json.dumps(results, indent=1))
    metrics = results["settings"][GATE_SETTING]["metrics"]
    return {"elucidation/top1_accuracy": metrics["top1_accuracy"],
            f"elucidation/top{top_k}_accuracy": metrics[f"top{top_k}_accuracy"],
            "elucidation/mean_tanimoto_top1": metrics["mean_tanimoto_top1"],
            "elucidation/valid_samples": metrics["valid_samples"],
            "elucidation/queries": float(results["num_queries"])}


def queries_by_index(qm9_index: torch.Tensor, folder: str | os.PathLike | None = None) -> TensorPack:
    """The test queries with these GDB indices, in this order, rebuilt from the spectra store. `query_pack` draws
    from the first molecules of the test split, so these are read first, then twice as many, and so on (the
    whole split, 3,000 molecules, takes about 90 s)."""
    from chemgen.models.diffspectra.data import spectra_pack

    wanted, limit = set(qm9_index.tolist()), max(64, 2 * len(qm9_index))
    while True:
        pack, report = spectra_pack(folder, split="test", limit=limit)
        position = {int(i): k for k, i in enumerate(pack.extras["system/qm9_index"].tolist())}
        if wanted <= set(position) or report.kept + sum(report.left_out.values()) < limit:   # found, or all read
            break
        limit *= 2
    missing = [int(i) for i in qm9_index.tolist() if int(i) not in position]
    if missing:
        raise UsageError(f"{len(missing)} benchmark queries (GDB indices {missing[:5]}...) are not molecules of the "
                         "spectra store's test split that decode")
    return pack.subset(torch.tensor([position[int(i)] for i in qm9_index.tolist()], dtype=torch.long))


def score_run_candidates(path: str | os.PathLike, folder: str | os.PathLike | None = None,
                         top_k: int = 10) -> tuple[dict[str, float], dict[str, str], int]:
    """A training run's benchmark candidates (``<run>/candidates.pt``, from ``--benchmark`` or the candidates
    command) as the gate reads them: (scores, evaluation context, number of queries). Scores are
    ``elucidation/<setting>/<metric>`` for every setting sampled and, for IR + Raman, the gate's unprefixed
    ``elucidation/<metric>``."""
    candidates = load_candidates(path)
    queries = queries_by_index(candidates["qm9_index"], folder)
    results = score_candidates(candidates, queries, top_k)
    scores: dict[str, float] = {}
    for setting, entry in results["settings"].items():
        for key, value in entry["metrics"].items():
            if key == "num_queries":
                continue
            scores[f"elucidation/{setting}/{key}"] = float(value)
            if setting == GATE_SETTING:
                scores[f"elucidation/{key}"] = float(value)
    identity = hashlib.sha256(",".join(map(str, candidates["qm9_index"].tolist())).encode()).hexdigest()[:12]
    context = {"benchmark_queries": f"{len(queries)}@{identity}", "candidates": str(results["num_samples"]),
               "sampling_steps": str(results["num_steps"]), "settings": ",".join(results["settings"]),
               "seed": str(int(candidates.get("seed", 0))), "top_k": str(top_k)}
    return scores, context, len(queries)


def markdown_table(results: Mapping[str, Any], label: str) -> str:
    """One row per setting: the table DiffSpectra's model card carries."""
    k = results["top_k"]
    rows = [f"| {label} | {setting} | {m['metrics']['top1_accuracy']:.1%} | {m['metrics'][f'top{k}_accuracy']:.1%} | "
            f"{m['metrics']['mean_tanimoto_top1']:.3f} | {m['metrics']['valid_samples']:.1%} |"
            for setting, m in results["settings"].items()]
    return "\n".join(rows)


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queries", help="the test queries as a tensor pack (CPU, RDKit)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--num", type=int, default=200)
    q.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("sample", help="sample candidates for the queries with a lineage")
    s.add_argument("--model", type=Path, required=True, help="a DiffSpectra lineage folder")
    s.add_argument("--queries", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--samples", type=int, default=10)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--settings", default=",".join(SETTINGS))
    r = sub.add_parser("score", help="rank and score sampled candidates (CPU, RDKit)")
    r.add_argument("candidates", type=Path)
    r.add_argument("--queries", type=Path, required=True)
    r.add_argument("--top-k", type=int, default=10)
    r.add_argument("--rerank", type=int, default=0, help="re-rank the first N queries by xTB spectra")
    r.add_argument("--out", type=Path, default=None, help="metrics JSON")
    r.add_argument("--label", default="")
    args = parser.parse_args(argv)

    if args.command == "queries":
        pack = query_pack(num_queries=args.num, seed=args.seed)
        pack.save(args.out, compress=True)
        print(json.dumps({"queries": len(pack), "out": str(args.out)}))
        return pack
    if args.command == "sample":
        from chemgen.models.loading import load_model

        model = load_model(args.model)
        candidates = sample_candidates(model, TensorPack.load(args.queries), args.settings.split(","), args.samples,
                                       args.steps, args.seed, log=print)
        save_candidates(args.out, candidates)
        return candidates
    from chemgen.io import atomic_write

    results = score_candidates(load_candidates(args.candidates), TensorPack.load(args.queries), args.top_k,
                               args.rerank, log=print)
    text = json.dumps(results, indent=1)
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(text)
    print(text)
    print(markdown_table(results, args.label or args.candidates.parent.name))
    return results


if __name__ == "__main__":
    main()

"""Rediscovery benchmark: which candidate source finds a chemical system's stable compound that it was not shown?

For a fixed set of chemical systems (the first ``--systems`` ternary oxide systems, by material id, that hold a
compound on the hull, E_hull = 0, in MP-20's test split), every stable test compound of the system is held out of the hull
the candidates are scored against; the substitution prototypes are MP-20's training structures, which never include
the test split. Each source then proposes ``--n`` candidates of the system (ADiT: its samples of the system among
``--adit-samples`` unconditional samples, drawn once and shared by all systems, so that it is not charged for the
same samples ten times), and the screening pipeline (`chemgen.screening.pipeline`: validity, batched CHGNet
relaxation, E_hull on the hull without the held-out compounds, novelty against MP-20's training structures)
scores them. A held-out compound is rediscovered by a source when one of its relaxed candidates matches it
(pymatgen's StructureMatcher, default tolerances, as MatterGen and FlowMM match).

Reported per source: the fraction of systems rediscovered, the metastable, S.U.N. and M.S.U.N. rates over all its
candidates, and seconds per candidate (generation and relaxation).

    python bench/bench_rediscovery.py --systems 10 --n 20 --adit-samples 256 --out bench/results/rediscovery
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def stable_test_systems(data_dir: Path, count: int, anion: str = "O") -> list[tuple[str, list[tuple[str, str]]]]:
    """[(system, [(material_id, cif), ...held-out stable compounds])] for the first ``count`` ternary systems with
    ``anion`` (oxides by default: what screening teams ask for most)."""
    test = pd.read_csv(data_dir / "mp_20" / "test.csv.gz")
    test = test[test.e_above_hull.fillna(1.0) <= 0.0].copy()
    test["system"] = test.elements.map(lambda text: "-".join(sorted(json.loads(text.replace("'", '"')))))
    test = test[(test.system.str.count("-") == 2) & test.system.str.split("-").map(lambda e: anion in e)]
    test = test.sort_values("material_id")
    systems = []
    for system, rows in test.groupby("system", sort=False):
        systems.append((system, list(zip(rows.material_id, rows.cif))))
        if len(systems) == count:
            break
    return systems


def rediscovered(targets: list[Any], structures: list[Any]) -> list[bool]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    return [any(matcher.fit(target, candidate) for candidate in structures
                if candidate.composition.reduced_formula == target.composition.reduced_formula) for target in targets]


def main(argv: list[str] | None = None) -> int:
    from pymatgen.core import Structure

    from chemgen.paths import default_data_dir
    from chemgen.scoring.hull import load_chgnet_references, load_mp20_hull
    from chemgen.scoring.report import training_references
    from chemgen.scoring.stability import relax_and_score
    from chemgen.screening import model_source, pipeline, random_search, substitution
    from chemgen.screening.candidates import SourceRun
    from chemgen.screening.prototypes import load_prototypes
    from chemgen.screening.request import ScreeningRequest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", type=int, default=10)
    parser.add_argument("--anion", default="O", help="element every system holds (O: ternary oxides)")
    parser.add_argument("--n", type=int, default=20, help="candidates per source and system")
    parser.add_argument("--sources", default="substitution,random,adit")
    parser.add_argument("--adit-samples", type=int, default=256, help="ADiT samples drawn once, shared by the systems")
    parser.add_argument("--relax-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/rediscovery"))
    args = parser.parse_args(argv)
    sources = pipeline.parse_sources(args.sources)
    data_dir = default_data_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    systems = stable_test_systems(data_dir, args.systems, args.anion)
    print(f"{len(systems)} systems: {', '.join(s for s, _ in systems)}", flush=True)
    hull, references, training = load_mp20_hull(), load_chgnet_references(), training_references()
    prototypes = load_prototypes(log=print) if "substitution" in sources else []
    pool: SourceRun | None = None
    if "adit" in sources:   # one unconditional pool, filtered per system
        start = time.perf_counter()
        pool = model_source.generate(None, args.adit_samples, seed=args.seed, max_samples=args.adit_samples, log=print)
        pool.seconds = time.perf_counter() - start
    rows: list[dict[str, Any]] = []
    for system, held_out in systems:
        request = ScreeningRequest.parse(system)
        ours = pipeline.hull_with(hull, exclude=[m for m, _ in held_out])
        targets = [Structure.from_str(cif, fmt="cif") for _, cif in held_out]
        for source in sources:
            start = time.perf_counter()
            try:
                if source == "substitution":
                    run = substitution.generate(request, args.n, prototypes=prototypes)
                elif source == "random":
                    run = random_search.generate(request, args.n, seed=args.seed)
                else:
                    kept = [c for c in pool.candidates if request.holds(c.structure.symbols, len(c.structure.symbols))]
                    run = SourceRun("adit", kept[:args.n], pool.attempts,
                                    pool.seconds * len(kept[:args.n]) / max(1, len(pool.candidates)))
            except Exception as error:  # noqa: BLE001 - a source with nothing for a system scores zero there
                run = SourceRun(source, [], 0, time.perf_counter() - start, [str(error)])
            valid = pipeline.validity(run.candidates)
            todo = [i for i, (ok, _) in enumerate(valid) if ok]
            relax_start = time.perf_counter()
            records = relax_and_score([run.candidates[i].structure.to_pymatgen() for i in todo], ours, references,
                                      steps=args.relax_steps, progress=False) if todo else []
            relax_seconds = time.perf_counter() - relax_start
            relaxed = {i: {"e_above_hull": r.e_above_hull, "e_form_per_atom": r.e_form_per_atom,
                           "relax_status": r.status, "relaxed": None} for i, r in zip(todo, records)}
            table = pipeline.assemble(run.candidates, valid, relaxed, training)
            finals = [r.structure for r in records if r.structure is not None]
            found = rediscovered(targets, finals) if finals else [False] * len(targets)
            metrics = pipeline.source_metrics(table, [run], {source: relax_seconds})[source]
            rows.append({"system": system, "source": source, "held_out": [m for m, _ in held_out],
                         "rediscovered": any(found), "candidates": len(run.candidates), **{
                             k: metrics[k] for k in ("metastable", "sun", "msun", "n_metastable", "n_sun", "n_msun",
                                                     "seconds_per_candidate")}, "note": run.note})
            print(f"{system:12s} {source:12s} {len(run.candidates):3d} candidates  rediscovered {any(found)!s:5s} "
                  f"metastable {metrics['n_metastable']:.0f}  M.S.U.N. {metrics['n_msun']:.0f}", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_json(args.out / "rows.json", orient="records", indent=1)
    summary = []
    for source in sources:
        part = frame[frame.source == source]
        total = part.candidates.sum()
        summary.append({"source": source, "systems": len(part), "rediscovered": float(part.rediscovered.mean()),
                        "candidates": int(total),
                        "metastable": float(part.n_metastable.sum() / total) if total else math.nan,
                        "sun": float(part.n_sun.sum() / total) if total else math.nan,
                        "msun": float(part.n_msun.sum() / total) if total else math.nan,
                        "seconds_per_candidate": float(np.nanmean(part.seconds_per_candidate))
                        if total else math.nan})
    (args.out / "summary.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                       "systems": [s for s, _ in systems], "sources": summary},
                                                      indent=1, default=float))
    print(pd.DataFrame(summary).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

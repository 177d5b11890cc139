"""Curation of every dataset into the versioned store; unchanged input is a no-op (content hashes).

Datasets curate in parallel; two curations of one dataset (this flow and a retrain, say) take turns on the
store's per-dataset lock, and the second reuses what the first stored once it verifies."""

from __future__ import annotations

from typing import Any

from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow

from chemgen import tracking
from chemgen.flows.retrain import curate_dataset

ALL_DATASETS = ("qm9", "mp20", "mpts52", "perov5", "carbon24")


@flow(name="curate", log_prints=True)
def curate_all(datasets: list[str] | None = None, data_dir: str | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
    """Curate each dataset (all by default); returns name, version, content hash and split sizes."""
    from prefect.runtime import flow_run

    from chemgen.data.store import CurationError

    names = list(dict.fromkeys(datasets or ALL_DATASETS))  # a name twice would only wait on itself (store lock)
    unknown = sorted(set(names) - set(ALL_DATASETS))
    if unknown:
        raise CurationError(f"unknown dataset(s) {unknown} (known: {', '.join(ALL_DATASETS)})")
    with tracking.run("curate", tags={"prefect.flow_run_id": str(flow_run.id)}):
        futures = [curate_dataset.submit(name, limit, data_dir) for name in names]
        results = [f.result() for f in futures]
        for r in results:
            from chemgen.data.store import read_manifest

            tracking.log_dataset_manifest(read_manifest(r["name"], r["version"]), context="curated")
            print(f"{r['name']}: version {r['version']} ({'reused' if r['reused'] else 'new'}), splits {r['splits']}")
    return results

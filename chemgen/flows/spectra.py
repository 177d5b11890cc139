"""The ``curate-spectra`` flow: QM9 xTB spectra, one Prefect task per shard, resumable and cached.

Each task computes one shard in its own single-threaded process and writes it atomically; a task
whose shard is already on disk with the same input content hash returns at once (the cache is
the committed shard itself, so it holds across machines and Prefect servers). Failed tasks are
retried; the manifest is rebuilt from the shards at the end, and the run is recorded in MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from chemgen import tracking

RETRIES = 2


@task(name="spectra-shard", retries=RETRIES, retry_delay_seconds=5, cache_policy=NO_CACHE,
      task_run_name="shard-{first}-{end}")
def spectra_shard(first: int, end: int, folder: str, job) -> dict[str, Any]:
    from chemgen.spectra.curation import cached_shard, compute_shard_isolated

    info = cached_shard(Path(folder), job)
    reused = info is not None
    if info is None:
        info = compute_shard_isolated(job, Path(folder))
    return {"file": info.file, "ok": info.ok, "failed": info.failed, "reused": reused,
            "seconds": info.metadata.get("seconds", 0.0)}


@flow(name="curate-spectra", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def curate_spectra_flow(limit: int | None = None, workers: int = 1, folder: str | None = None,
                        shard_size: int | None = None, recompute_existing: bool = False) -> dict[str, Any]:
    """Compute the first ``limit`` molecules of the order that no shard covers, ``workers`` shards at a time.

    ``recompute_existing`` re-plans every shard of the range (not only the gaps): shards whose input is
    unchanged are then returned from the cache, the others are computed again.
    """
    from prefect.runtime import flow_run

    from chemgen.spectra import curation as spectra
    from chemgen.data.qm9 import NUM_MOLECULES, read_qm9_frame
    from chemgen.spectra import shards
    from chemgen.spectra.compute import SpectraSettings

    target = Path(folder) if folder else spectra.default_folder()
    size = shard_size or spectra.SHARD_SIZE
    limit = NUM_MOLECULES if limit is None else min(limit, NUM_MOLECULES)
    settings_ = SpectraSettings()
    results: list[dict[str, Any]] = []
    with spectra.folder_lock(target):
        shards.remove_temporaries(target)
        existing = shards.scan(target)
        spectra.check_settings(existing, settings_, target)
        ranges = spectra.plan([] if recompute_existing else shards.covered(existing), limit, size)
        frame = read_qm9_frame() if ranges else None
        for start in range(0, len(ranges), workers):  # a batch at a time: jobs are built only when needed
            batch = ranges[start:start + workers]
            futures = [spectra_shard.submit(first, end, str(target),
                                            spectra.ShardJob(first, end, spectra.make_molecules(range(first, end), frame),
                                                             settings_))
                       for first, end in batch]
            for future in futures:
                result = future.result()
                results.append(result)
                print(f"{result['file']}: {result['ok']} ok, {result['failed']} failed"
                      + (" (cached)" if result["reused"] else f" in {result['seconds']:.0f} s"))
        manifest = shards.build_manifest(target, spectra.manifest_description())
    with tracking.run("curate-spectra", tags={"prefect.flow_run_id": str(flow_run.id)}):
        counts = manifest["counts"]
        tracking.log_params({"dataset": spectra.NAME, "limit": limit, "workers": workers, "shard_size": size,
                             "tblite": ",".join(manifest["tblite_versions"]), "content_hash": manifest["content_hash"]})
        tracking.log_metrics({"molecules": counts["molecules"], "ok": counts["ok"], "failed": counts["failed"],
                              "computed_shards": sum(not r["reused"] for r in results),
                              "cached_shards": sum(r["reused"] for r in results)})
    return {"folder": str(target), "counts": manifest["counts"], "content_hash": manifest["content_hash"],
            "shards": results}

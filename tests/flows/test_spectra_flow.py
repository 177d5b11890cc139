"""The real ``curate-spectra`` flow on an ephemeral Prefect API: shards, cache hits, MLflow record."""

from __future__ import annotations

import pytest

pytest.importorskip("tblite")

from chemgen import tracking  # noqa: E402
from chemgen.spectra import shards  # noqa: E402
from chemgen.flows.spectra import curate_spectra_flow  # noqa: E402


def test_flow_computes_then_serves_shards_from_the_content_hash_cache(tmp_path):
    folder = tmp_path / "qm9-xtb"
    first = curate_spectra_flow(limit=2, workers=2, folder=str(folder), shard_size=1)
    assert [r["reused"] for r in first["shards"]] == [False, False]
    assert first["counts"]["molecules"] == 2 and [s.file for s in shards.scan(folder)] == [
        "shard-000000-000001.parquet", "shard-000001-000002.parquet"]
    hashes = {s.file: s.sha256 for s in shards.scan(folder)}

    again = curate_spectra_flow(limit=2, workers=2, folder=str(folder), shard_size=1, recompute_existing=True)
    assert [r["reused"] for r in again["shards"]] == [True, True]
    assert {s.file: s.sha256 for s in shards.scan(folder)} == hashes
    assert again["content_hash"] == first["content_hash"]

    runs = tracking.client().search_runs([tracking.experiment_id()], "attributes.run_name = 'curate-spectra'")
    assert len(runs) == 2 and {r.data.metrics["cached_shards"] for r in runs} == {0.0, 2.0}

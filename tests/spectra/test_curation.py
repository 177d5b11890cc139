"""Curating QM9 spectra into shards: order, resume, no-op re-runs, interrupted shards, locks and kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("tblite")

from chemgen.spectra import curation as spectra  # noqa: E402
from chemgen.data.qm9 import edm_split, read_qm9_frame  # noqa: E402
from chemgen.spectra import shards  # noqa: E402
from chemgen.spectra.compute import SpectraSettings  # noqa: E402


def test_order_starts_with_3000_test_molecules_then_train():
    rows, splits = spectra.computation_order()
    split = edm_split()
    assert len(rows) == 130_831 and len(set(rows.tolist())) == 130_831
    assert (splits[:3000] == "test").all() and np.array_equal(rows[:3000], split["test"][:3000])
    assert np.array_equal(rows[3000:103_000], split["train"]) and (splits[3000:103_000] == "train").all()


def test_plan_fills_gaps_at_shard_boundaries():
    assert spectra.plan([], 1200, 500) == [(0, 500), (500, 1000), (1000, 1200)]
    assert spectra.plan([(0, 500), (700, 1000)], 1200, 500) == [(500, 700), (1000, 1200)]
    assert spectra.plan([(0, 300)], 300, 500) == []


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spectra") / "qm9-xtb"
    report = spectra.curate_spectra(folder, limit=3, shard_size=2, progress=False)
    return folder, report


def test_curation_writes_shards_and_manifest(curated):
    folder, report = curated
    assert report.computed == 3 and report.shards_written == ["shard-000000-000002.parquet", "shard-000002-000003.parquet"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["molecules"] == 3 and manifest["counts"]["contiguous_prefix"] == 3
    assert manifest["tblite_versions"] and manifest["settings"] == SpectraSettings().as_dict()
    table = shards.read_table(folder)
    frame = read_qm9_frame()
    rows, _ = spectra.computation_order()
    for record in table.to_pylist():
        qm9 = frame.iloc[int(rows[record["order"]])]
        assert record["qm9_index"] == qm9.Index and record["split"] == "test"
        assert len(record["inchikey"]) == 27 and record["smiles"] == qm9.SMILES
        if record["failure"] is None:
            n = len(record["atomic_numbers"])
            assert len(record["positions"]) == 3 * n
            assert len(record["frequencies_cm1"]) == len(record["ir_km_mol"]) == len(record["raman_a4_amu"])


def test_rerun_is_a_noop_and_extension_computes_only_the_gap(curated):
    folder, _ = curated
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")}
    again = spectra.curate_spectra(folder, limit=3, shard_size=2, progress=False)
    assert again.computed == 0 and again.shards_written == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.parquet")} == before
    more = spectra.curate_spectra(folder, limit=4, shard_size=2, progress=False)
    assert more.computed == 1 and more.shards_written == ["shard-000003-000004.parquet"]
    assert more.manifest["counts"]["contiguous_prefix"] == 4


def test_other_settings_are_refused(curated):
    folder, _ = curated
    with pytest.raises(shards.SpectraStoreError, match="other settings"):
        spectra.curate_spectra(folder, limit=5, shard_size=2, progress=False, settings=SpectraSettings(raman=False))


def test_a_second_run_on_the_same_folder_is_refused(curated):
    folder, _ = curated
    with spectra.folder_lock(folder):
        with pytest.raises(shards.SpectraStoreError, match="another spectra curation"):
            spectra.curate_spectra(folder, limit=3, progress=False)


def test_an_abandoned_shard_writes_nothing(tmp_path):
    job = spectra.ShardJob(0, 2, spectra.make_molecules(range(0, 2)), SpectraSettings(), deadline=time.time() - 1)
    with pytest.raises(spectra.ShardAbandoned):
        spectra.compute_shard(job, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_shard_is_named(tmp_path):
    (tmp_path / "shard-000000-000002.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(shards.SpectraStoreError, match="shard-000000-000002.parquet: unreadable shard"):
        spectra.curate_spectra(tmp_path, limit=2, progress=False)


def test_killed_run_leaves_no_half_shard_and_resumes(tmp_path):
    """SIGKILL the CLI mid-shard: no shard, no manifest entry; the next run computes it whole."""
    folder = tmp_path / "qm9-xtb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "chemgen.cli", "data", "prepare", "qm9-spectra", "--limit", "6", "--out", str(folder)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    time.sleep(6)  # QM9 read + a few molecules of the 6-molecule shard
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not list(folder.glob("shard-*.parquet"))
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [p.name for p in folder.glob("shard-*.parquet")] == ["shard-000000-000006.parquet"]
    assert not list(folder.glob(".tmp-*"))
    assert pq.read_metadata(folder / "shard-000000-000006.parquet").num_rows == 6


def test_sigterm_finishes_the_running_shard_then_exits(tmp_path):
    folder = tmp_path / "qm9-xtb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "chemgen.cli", "data", "prepare", "qm9-spectra", "--limit", "5", "--out", str(folder)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import psutil

    def spawned() -> int:  # the Manager's server, then the worker the shard was submitted to
        try:
            return sum("spawn_main" in " ".join(c.cmdline()) for c in psutil.Process(process.pid).children())
        except psutil.Error:
            return 0

    # signal once the shard runs (a fixed sleep fails on a loaded machine: the shard had not started)
    deadline = time.monotonic() + 120
    while spawned() < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # to the parent only, as `make spectra-stop` sends it
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert [p.name for p in folder.glob("shard-*.parquet")] == ["shard-000000-000005.parquet"]
    assert "SIGTERM: finishing 1 running shard" in output and "computed 5 molecules" in output


def test_broadened_on_load_conserves_band_areas(curated):
    folder, _ = curated
    data = spectra.load_broadened(folder, scale=1.0)
    table = shards.read_table(folder, only_ok=True)
    assert data["ir"].shape == (table.num_rows, 3501) and data["raman"].dtype == np.float32
    for i, row in enumerate(table.to_pylist()):
        f, ir = np.asarray(row["frequencies_cm1"]), np.asarray(row["ir_km_mol"])
        inside = (f > 600) & (f < 3900)   # bands well inside the grid keep (almost) all of their area
        assert data["ir"][i].sum() >= 0.97 * ir[inside].sum()
        assert data["ir"][i].sum() <= 1.03 * ir[f > 0].sum()
        assert data["positions"][i].shape == (len(row["atomic_numbers"]), 3)

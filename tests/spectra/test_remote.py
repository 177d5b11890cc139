"""Spectra computed on another machine without the chemistry stack, then checked and imported here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

pytest.importorskip("tblite")

from chemgen.spectra import curation as spectra  # noqa: E402
from chemgen.spectra import offload as remote, shards  # noqa: E402
from chemgen.spectra.compute import SpectraSettings  # noqa: E402

# The GPU machine has numpy, scipy, pandas and pyarrow but no RDKit, pymatgen, MLflow or Prefect.
BLOCKED = ("rdkit", "pymatgen", "mlflow", "prefect", "torch", "smact", "chgnet")
RUN_REMOTE = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in {blocked!r}]; "
              "runpy.run_module('chemgen.spectra.offload', run_name='__main__')")


def _remote(jobs, out, minutes="3"):
    command = [sys.executable, "-c", RUN_REMOTE.format(blocked=BLOCKED), "--jobs", str(jobs), "--out", str(out),
               "--workers", "2", "--minutes", minutes]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


def test_export_compute_elsewhere_import(tmp_path):
    folder = tmp_path / "qm9-xtb"
    assert spectra.export_plan(folder, start=1, limit=3, shard_size=1) == [(1, 2), (2, 3)]
    jobs = remote.export_jobs(tmp_path / "jobs.json", [(1, 2), (2, 3)],
                              lambda f, e: spectra.make_molecules(range(f, e)), SpectraSettings())
    result = _remote(jobs, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "2 molecules" in result.stdout and "2 shard(s)" in result.stdout
    archive = tmp_path / "out" / remote.ARCHIVE
    added = remote.import_shards(archive, folder)
    assert added == ["shard-000001-000002.parquet", "shard-000002-000003.parquet"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["molecules"] == 2 and manifest["counts"]["contiguous_prefix"] == 0
    assert remote.import_shards(archive, folder) == []          # already there: nothing added twice
    local = spectra.curate_spectra(folder, limit=3, progress=False)  # this machine fills the gap at 0
    assert local.computed == 1 and local.manifest["counts"]["contiguous_prefix"] == 3


def test_import_refuses_shards_of_other_molecules(tmp_path):
    jobs_path = remote.export_jobs(tmp_path / "jobs.json", [(0, 1)],
                                   lambda f, e: spectra.make_molecules(range(f, e)), SpectraSettings())
    payload = json.loads(jobs_path.read_text())
    payload["shards"][0]["molecules"][0]["positions"][0][0] += 0.3   # not QM9's geometry any more
    jobs_path.write_text(json.dumps(payload))
    assert _remote(jobs_path, tmp_path / "out").returncode == 0
    with pytest.raises(shards.SpectraStoreError, match="does not hold the molecules of its range"):
        remote.import_shards(tmp_path / "out" / remote.ARCHIVE, tmp_path / "qm9-xtb")
    assert not list((tmp_path / "qm9-xtb").glob("shard-*"))
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w"):
        pass
    with pytest.raises(shards.SpectraStoreError, match="no shard files"):
        remote.import_shards(bad, tmp_path / "qm9-xtb")

"""Kill tests of curation: a real `curate` of a tiny MP-20 set runs in a subprocess that SIGKILLs itself at each
step of a ``--force`` replacement (the CHEMGEN_TEST_KILL_AT hook of chemgen.data.store), and two real curations
of one dataset run at once. Afterwards the store must load and verify, and a plain re-run must succeed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from chemgen.datasets import curation_recipe
from chemgen.data.store import (
    KILL_AT_ENV,
    curate,
    dataset_lock,
    list_datasets,
    load,
    verify,
)

ROOT = Path(__file__).resolve().parents[2]
ROWS = 8  # per source file: seconds per curation, most of it the child's imports

# The same call `chemgen data prepare mp20 --data-dir D --store S [--force]` makes.
CHILD = """
import sys
from chemgen.datasets import curation_recipe
from chemgen.data import store
if sys.argv[4] == "no-exchange":
    store._RENAMEAT2 = None  # as on a system without renameat2: the old copy is moved aside, then the new one in
result = store.curate(curation_recipe("mp20", data_dir=sys.argv[1]), root=sys.argv[2], force=sys.argv[3] == "force",
                      progress=False)
print("reused" if result.reused else "built", result.version)
"""


@pytest.fixture(scope="module")
def tiny_mp20(tmp_path_factory, data_dir) -> Path:
    folder = tmp_path_factory.mktemp("mp_20")
    for name in ("train_first1000", "val", "test"):
        pd.read_csv(data_dir / "mp_20" / f"{name}.csv.gz", nrows=ROWS).to_csv(folder / f"{name}.csv.gz", index=False)
    return folder


def child(tiny_mp20: Path, store: Path, force: bool = False, kill_at: str | None = None,
          exchange: bool = True, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_AT_ENV, None)
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    args = [sys.executable, "-c", CHILD, str(tiny_mp20), str(store), "force" if force else "plain",
            "exchange" if exchange else "no-exchange"]
    return subprocess.Popen(args, cwd=ROOT, env=env, text=True, **popen)


def leftovers(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "mp20").iterdir() if p.name.startswith((".tmp-", ".trash-")))


def assert_loadable(store: Path, version: str, rows: int) -> None:
    """LATEST names a version that exists and verifies, and `load` gives every curated row."""
    assert (store / "mp20" / "LATEST").read_text().strip() == version
    assert (store / "mp20" / version / "manifest.json").is_file()
    assert verify("mp20", root=store) == []
    assert len(load("mp20", root=store)) == rows
    assert list_datasets(store)["mp20"] == [version]


@pytest.mark.parametrize("step, left", [
    ("locked", []),                       # lock held, nothing written yet
    ("temp-written", [".tmp-"]),          # the new copy complete beside the old one
    ("installed", [".trash-"]),           # swapped: the new copy in place, the old one aside
    ("latest-moved", [".trash-"]),        # LATEST written, the old copy not yet deleted
    ("trash-half-deleted", [".trash-"]),  # the old copy half deleted
])
def test_sigkill_at_each_step_of_force_leaves_a_loadable_store(step, left, tiny_mp20, store):
    first = curate(curation_recipe("mp20", data_dir=tiny_mp20), root=store, progress=False)
    rows = first.manifest["counts"]["curated"]
    assert rows == 3 * ROWS and not first.reused

    killed = child(tiny_mp20, store, force=True, kill_at=step, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, f"the child was not killed at {step}: {out}{err}"
    assert [name.split("-")[0] + "-" for name in leftovers(store)] == left  # it died at that step, not elsewhere
    if step == "trash-half-deleted":
        trash = store / "mp20" / leftovers(store)[0]
        assert len(list(trash.iterdir())) < len(list(first.path.iterdir()))

    assert_loadable(store, first.version, rows)  # right after the kill, before any repair

    again = curate(curation_recipe("mp20", data_dir=tiny_mp20), root=store, progress=False, lock_timeout=10)
    assert again.reused and again.version == first.version  # the copy in place verified
    assert leftovers(store) == []  # what the killed run left is gone
    assert_loadable(store, first.version, rows)


def test_sigkill_between_the_two_renames_without_an_atomic_swap_is_repaired_by_the_next_run(tiny_mp20, store):
    # Without renameat2 the version is missing for a moment; a kill then leaves the complete old copy aside,
    # and the next curation (under the lock, before anything else) puts it back and verifies it.
    first = curate(curation_recipe("mp20", data_dir=tiny_mp20), root=store, progress=False)
    killed = child(tiny_mp20, store, force=True, kill_at="moved-aside", exchange=False,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not first.path.exists() and [n.split("-")[0] for n in leftovers(store)] == [".tmp", ".trash"]

    again = curate(curation_recipe("mp20", data_dir=tiny_mp20), root=store, progress=False, lock_timeout=10)
    assert again.reused and leftovers(store) == []
    assert_loadable(store, first.version, first.manifest["counts"]["curated"])


def test_force_without_an_atomic_swap_replaces_the_version(tiny_mp20, store):
    first = curate(curation_recipe("mp20", data_dir=tiny_mp20), root=store, progress=False)
    run = child(tiny_mp20, store, force=True, exchange=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert out.split() == ["built", first.version] and leftovers(store) == []
    assert_loadable(store, first.version, first.manifest["counts"]["curated"])


def test_two_concurrent_curations_take_turns_and_the_second_reuses_the_first(tiny_mp20, store, tmp_path):
    folder = store / "mp20"
    logs = [tmp_path / f"stderr-{i}.txt" for i in range(2)]
    with dataset_lock(folder):  # both runs start while the lock is held, then race for it
        runs = [child(tiny_mp20, store, stdout=subprocess.PIPE, stderr=log.open("w")) for log in logs]
        deadline = time.monotonic() + 120
        while not all("is running; waiting" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(run.poll() is None for run in runs), [log.read_text() for log in logs]
            time.sleep(0.2)
        assert all(f"(pid {os.getpid()})" in log.read_text() for log in logs)  # the message names the holder
    outs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [log.read_text() for log in logs]
    kinds = sorted(out.split()[0] for out in outs)
    versions = {out.split()[1] for out in outs}
    assert kinds == ["built", "reused"] and len(versions) == 1  # one built while the other waited, then reused it
    assert leftovers(store) == []
    assert_loadable(store, versions.pop(), 3 * ROWS)

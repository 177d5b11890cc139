"""The screening flow's bounds (task runner, tasks in flight, the Dask dashboard) and the CHGNet caches it reads:
keyed by their inputs, written atomically, built once however many callers ask at the same time."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from pathlib import Path

import pytest

from chemgen.flows import screen  # noqa: I001  (first: it sets Prefect's embedded defaults before prefect loads)

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from chemgen.errors import UsageError
from chemgen.scoring import hull


def test_the_screening_flows_thread_pool_runs_no_more_tasks_than_cores():
    """Prefect's default pool has sys.maxsize threads: the screening flow's own runner, given three more
    0.2 s tasks than there are cores, runs at most one per core at a time (and more than one when it can)."""
    assert isinstance(screen.crystal_screening.task_runner, ThreadPoolTaskRunner)
    lock = threading.Lock()
    running, peak = [0], [0]

    @task(cache_policy=NO_CACHE)
    def busy(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return i

    @flow(task_runner=screen.crystal_screening.task_runner.duplicate())
    def fan_out(n: int) -> list[int]:
        return [f.result() for f in busy.map(range(n))]

    cores = os.cpu_count() or 1
    assert fan_out(cores + 3) == list(range(cores + 3))
    assert peak[0] == min(cores, screen.MAX_THREADS) and screen.MAX_THREADS <= cores
    assert screen.DEFAULT_WORKERS >= 1


def test_bounded_map_keeps_at_most_workers_tasks_in_flight():
    """Six 0.2 s tasks on a runner that would run all six at once: never more than two run together, the
    results come back in submission order, and two do overlap (the bound is not a serialisation)."""
    lock = threading.Lock()
    running, peak = [0], [0]

    @task(cache_policy=NO_CACHE)
    def slow(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return i * i

    done = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=6))
    def fan_out(workers: int) -> list[int]:
        return screen.bounded_map(slow, [(i,) for i in range(6)], workers, on_done=lambda *d: done.append(d))

    assert fan_out(2) == [0, 1, 4, 9, 16, 25]
    assert peak[0] == 2
    assert done == [(i, 6) for i in range(1, 7)]  # once per task, as each finishes
    with pytest.raises(ValueError, match="workers must be at least 1"):
        screen.bounded_map(slow, [(1,)], 0)


def test_a_chemical_system_is_a_set_of_element_symbols():
    assert screen.parse_chemical_system("Li-Fe-O") == ("Fe", "Li", "O")
    assert screen.parse_chemical_system("O-Li") == screen.parse_chemical_system("Li-O-Li") == ("Li", "O")
    assert screen.parse_chemical_system(None) is None
    for bad, named in (("Li-Xx", "'Xx'"), ("Li--O", "''"), ("li-O", "'li'"), ("D-O", "'D'")):
        with pytest.raises(UsageError, match=named):
            screen.parse_chemical_system(bad)


def test_the_dask_dashboard_listens_on_this_machine_only():
    local = screen.with_dask().task_runner.cluster_kwargs
    assert ipaddress.ip_address(local["dashboard_address"].rsplit(":", 1)[0]).is_loopback
    assert ipaddress.ip_address(local["host"]).is_loopback  # the scheduler too
    assert local["threads_per_worker"] == 1
    assert screen.with_dask(dashboard_address=None).task_runner.cluster_kwargs["dashboard_address"] is None
    remote = screen.with_dask(address="tcp://10.0.0.5:8786").task_runner
    assert remote.address == "tcp://10.0.0.5:8786" and not remote.cluster_kwargs  # that cluster is its owner's


# ----------------------------------------------------------------------------- the CHGNet caches
@pytest.fixture()
def tiny_mp20(tmp_path: Path) -> Path:
    """Stand-ins for the MP-20 files the fits read: the keys hash their bytes, nothing parses them here."""
    root = tmp_path / "data"
    (root / "mp_20").mkdir(parents=True)
    for split in ("train_first1000", "val", "test"):
        (root / "mp_20" / f"{split}.csv.gz").write_bytes(f"{split} rows\n".encode())
    return root


def test_the_references_cache_is_keyed_by_the_data_content_splits_and_chgnet(tiny_mp20, tmp_path, monkeypatch):
    monkeypatch.setenv("CHEMGEN_CACHE_DIR", str(tmp_path / "cache"))
    first = hull.references_cache_path(tiny_mp20)
    assert first.parent == tmp_path / "cache" and first == hull.references_cache_path(tiny_mp20)
    # the same bytes in another folder are the same input
    copy = tmp_path / "elsewhere"
    (copy / "mp_20").mkdir(parents=True)
    for f in (tiny_mp20 / "mp_20").iterdir():
        (copy / "mp_20" / f.name).write_bytes(f.read_bytes())
    assert hull.references_cache_path(copy) == first
    # a changed file, other splits, another CHGNet: another key
    (copy / "mp_20" / "val.csv.gz").write_bytes(b"val rows, corrected\n")
    assert hull.references_cache_path(copy) != first
    base = hull.cache_key(hull.references_inputs(tiny_mp20))
    assert hull.cache_key(hull.references_inputs(tiny_mp20, splits=("val",))) != base
    assert hull.cache_key(hull.references_inputs(tiny_mp20, limit=10)) != base
    monkeypatch.setattr(hull, "chgnet_version", lambda: "0.9.9")
    assert hull.references_cache_path(tiny_mp20) != first
    # the test split is not an input of the references, but it is of sigma
    refs = hull.ElementalReferences({"Li": -1.9, "O": -4.9})
    sigma_path = hull.sigma_cache_path(tiny_mp20, refs)
    (tiny_mp20 / "mp_20" / "test.csv.gz").write_bytes(b"test rows, v2\n")
    assert hull.sigma_cache_path(tiny_mp20, refs) != sigma_path
    assert hull.sigma_cache_path(tiny_mp20, hull.ElementalReferences({"Li": -1.8, "O": -4.9})) != \
        hull.sigma_cache_path(tiny_mp20, refs)
    with pytest.raises(FileNotFoundError, match=r"elsewhere/mp_20/test\.csv\.gz: no such file"):
        (copy / "mp_20" / "test.csv.gz").unlink()
        hull.sigma_cache_path(copy, refs)


def test_concurrent_callers_share_one_fit(tiny_mp20, tmp_path, monkeypatch):
    """Two callers on a cold cache: one fits (a stand-in that takes 0.5 s), the other waits on the lock and
    reads the file; a third, later, reads it too. Nothing is left half-written."""
    monkeypatch.setenv("CHEMGEN_CACHE_DIR", str(tmp_path / "cache"))
    calls = []

    def fake_fit(data_dir=None, *args, **kwargs):
        calls.append(data_dir)
        time.sleep(0.5)
        return hull.ElementalReferences({"Li": -1.9, "O": -4.9}, {"Li": 3, "O": 3}, 0.01, "stand-in")

    monkeypatch.setattr(hull, "build_chgnet_references", fake_fit)
    results: list = [None, None]
    errors: list = []

    def call(slot: int) -> None:
        try:
            results[slot] = hull.load_chgnet_references(data_dir=tiny_mp20)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(calls) == 1
    assert results[0] == results[1] == hull.load_chgnet_references(data_dir=tiny_mp20)
    assert len(calls) == 1
    cached = hull.references_cache_path(tiny_mp20)
    assert hull.ElementalReferences.from_json(cached).source == "stand-in"
    assert not list(cached.parent.glob(".*.tmp"))  # the atomic write left no temporary behind


def test_a_failed_fit_leaves_no_cache_and_the_next_caller_fits(tiny_mp20, tmp_path, monkeypatch):
    monkeypatch.setenv("CHEMGEN_CACHE_DIR", str(tmp_path / "cache"))

    def failing_fit(*args, **kwargs):
        raise RuntimeError("CHGNet crashed")

    monkeypatch.setattr(hull, "build_chgnet_references", failing_fit)
    with pytest.raises(RuntimeError, match="CHGNet crashed"):
        hull.load_chgnet_references(data_dir=tiny_mp20)
    assert not hull.references_cache_path(tiny_mp20).exists()
    monkeypatch.setattr(hull, "build_chgnet_references",
                        lambda *a, **k: hull.ElementalReferences({"Li": -1.9}, {"Li": 1}, 0.0, "second try"))
    assert hull.load_chgnet_references(data_dir=tiny_mp20).source == "second try"

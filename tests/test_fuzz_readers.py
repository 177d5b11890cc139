"""Mutated real QM9 and MP-20 files through every structure reader: only chemgen's errors escape, nothing
hangs, nothing non-finite or beyond the record's physical limits is accepted (`make fuzz` runs 10,000
inputs per format; this is its seeded short form)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

# The fuzz harness is a tool of the repository (tools/), not of the library; its spawned workers find it on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fuzz_readers as fuzz  # noqa: E402

PER_FORMAT = 120


def test_mutated_real_files_give_records_or_chemgens_errors(data_dir, tmp_path):
    reports = fuzz.run(PER_FORMAT, seed=7, timeout=20.0, data_dir=data_dir, keep_failures=tmp_path)
    failures = [f"{f['format']} #{f['index']} {f['mutations']}: {f['outcome']} {f['detail']}"
                for report in reports.values() for f in report.failures]
    assert not failures, "\n".join(failures)
    for fmt, report in reports.items():
        assert report.inputs == PER_FORMAT
        # the campaign exercises both sides: damaged files that still read, and ones refused
        assert report.accepted > 0, fmt
        assert report.outcomes["refused"] + (report.records - report.accepted) > 0, fmt


def test_the_fuzzer_counts_a_hang_and_a_crash_as_failures(monkeypatch):
    worker = fuzz.Worker()
    try:
        hang = worker.read("xyz", b"2\nc\nC 0 0 0\nH 0 0 1\n", timeout=1e-6)   # no reader answers in a microsecond
        assert hang["outcome"] == "hang"
        worker.process.kill()                                               # a worker the kernel killed
        dead = worker.read("xyz", b"1\n\nC 0 0 0\n", timeout=20)
        assert dead["outcome"] == "crash" and "died" in dead["detail"]
        fine = worker.read("xyz", b"1\n\nC 0 0 0\n", timeout=20)           # and its replacement reads on
        assert fine["outcome"] == "read" and fine["accepted"] == 1
    finally:
        worker.close()


def test_mutations_are_seeded():
    data = b"3\nwater\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n"
    assert fuzz.mutate(data, random.Random(3)) == fuzz.mutate(data, random.Random(3))

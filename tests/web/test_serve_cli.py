"""`chemgen serve` as a user starts it: a process listening on 127.0.0.1 that picks up jobs a stopped server
had accepted but not started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from chemgen.web import jobs
from tests.web.conftest import free_port


def test_serve_listens_on_localhost_and_starts_jobs_left_behind(tmp_path, uploads):
    home = tmp_path / "home"
    jobs_dir = home / "web" / "jobs"
    jobs_dir.mkdir(parents=True)
    # a job accepted by a server that stopped before starting its runner
    job_id, staging = jobs.new_staging(jobs_dir)
    (staging / "uploads" / "file-1.jdx").write_bytes(uploads["ir"].read_bytes())
    folder = jobs.commit_job(staging, "elucidation", {"samples": 2, "steps": 2, "rerank": False}, "left behind",
                             [{"name": "q.jdx", "kind": "ir", "stored": "uploads/file-1.jdx"}])
    assert jobs.job_state(folder).state == "submitted"
    port = free_port()
    chemgen = Path(sys.executable).with_name("chemgen")
    server = subprocess.Popen([str(chemgen), "serve", "--port", str(port)], env={**os.environ, "CHEMGEN_HOME": str(home)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"ok": True}:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "chemgen serve did not start"
            time.sleep(0.5)
        deadline = time.monotonic() + 60           # the new server started its runner, which says so
        while not (folder / "runner.json").exists():
            assert time.monotonic() < deadline, "the job left behind was not started"
            time.sleep(0.5)
        assert jobs.job_state(folder).state in ("queued", "running", "completed")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
        runner = folder / "runner.json"
        if runner.exists() and not (folder / "result.json").exists():
            try:
                os.killpg(jobs.read_json(runner)["pid"], signal.SIGTERM)   # the runner is its own session
            except ProcessLookupError:
                pass
    assert f"http://127.0.0.1:{port}" in output

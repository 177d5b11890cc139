"""Jobs of the web app: one folder per job, one detached runner process per job, state read back from files and
from Prefect.

A job's folder, ``<home>/jobs/<id>/`` (``id``: 32 hex digits the server draws; nothing a client sends becomes a
path), holds

``job.json``     kind, flow parameters, what the user uploaded (display names only), written before the runner starts
``uploads/``     the uploaded files under server-made names (``file-1.jdx``)
``runner.json``  the runner's pid (written when it starts, before it waits for a free slot)
``run.json``     the Prefect flow run's id (written by the flow's on-running hook)
``result.json`` / ``error.json``  the flow's result, or the error that ended it
``out/``         what the flow wrote (candidates, CIFs, plots)

A job is created in a hidden staging folder and renamed into place whole, so a half-made job is never listed.
Its state comes from these files and from the Prefect flow run they name (its state and its progress artifact):
the server keeps nothing in memory, so jobs survive page reloads and server restarts (a runner is its own
process session and goes on while the server restarts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chemgen.errors import ChemgenError
from chemgen.io import atomic_write

KINDS = ("elucidation", "screening")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
STAGING_PREFIX = ".staging-"
FINAL_FILES = ("result.json", "error.json")


class JobNotFoundError(ChemgenError, LookupError):
    """No job with this id (or the id is not one the server could have made)."""


@dataclass(frozen=True)
class JobState:
    """``state``: submitted (no runner yet), queued (waiting for a free slot), running, completed, failed or
    crashed (the runner ended without a result); ``progress`` in 0..1 when the flow reported one."""

    state: str
    progress: float | None = None
    message: str = ""
    flow_run_id: str | None = None
    prefect_state: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed", "crashed")


def write_json(path: Path, data: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=1, default=str)
        handle.write("\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- creating
def new_staging(jobs_dir: Path) -> tuple[str, Path]:
    """A fresh job id and its hidden staging folder (uploads are written and checked there first)."""
    job_id = uuid.uuid4().hex
    staging = jobs_dir / f"{STAGING_PREFIX}{job_id}"
    (staging / "uploads").mkdir(parents=True)
    return job_id, staging


def commit_job(staging: Path, kind: str, params: dict[str, Any], label: str,
               uploads: list[dict[str, str]] = (), workers: int = 1, owner: str = "local") -> Path:
    """Write job.json into the staging folder and rename it into place: the job exists whole or not at all."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    job_id = staging.name.removeprefix(STAGING_PREFIX)
    write_json(staging / "job.json", {"id": job_id, "kind": kind, "label": label, "params": params,
                                      "uploads": list(uploads), "workers": workers, "owner": owner,
                                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    final = staging.parent / job_id
    os.replace(staging, final)
    return final


def discard_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def start_runner(job_dir: Path) -> int:
    """Start the job's runner as a detached process (its own session: a server restart does not end it).
    A thread reaps it when it exits, so a finished runner never lingers as a zombie that looks alive."""
    log = open(job_dir / "runner.log", "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        process = subprocess.Popen([sys.executable, "-m", "chemgen.web.runner", str(job_dir)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    threading.Thread(target=process.wait, daemon=True, name=f"reap-{job_dir.name[:8]}").start()
    return process.pid


def resume_submitted(jobs_dir: Path) -> list[str]:
    """Start runners for jobs that were created but never started (the server stopped in between)."""
    started = []
    for job_dir in _job_dirs(jobs_dir):
        if not (job_dir / "runner.json").exists() and not any((job_dir / f).exists() for f in FINAL_FILES):
            start_runner(job_dir)
            started.append(job_dir.name)
    return started


def expire_jobs(jobs_dir: Path, days: float, now: float | None = None) -> list[str]:
    """Delete finished jobs (completed, failed, crashed) created more than ``days`` ago, folder and files together;
    a job that is still running is kept whatever its age. Returns the ids deleted."""
    import datetime

    now = time.time() if now is None else now
    deleted = []
    for folder in _job_dirs(jobs_dir):
        try:
            created = datetime.datetime.fromisoformat(read_json(folder / "job.json")["created"]).timestamp()
        except (KeyError, ValueError, OSError):
            continue
        if now - created <= days * 86400 or not job_state(folder).finished:
            continue
        # renamed out of the listing first: a reader sees the whole job or none of it
        doomed = folder.with_name(f".expired-{folder.name}")
        os.replace(folder, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(folder.name)
    return deleted


# ---------------------------------------------------------------------------- reading
def _job_dirs(jobs_dir: Path) -> list[Path]:
    if not jobs_dir.is_dir():
        return []
    return [p for p in jobs_dir.iterdir() if JOB_ID.match(p.name) and (p / "job.json").is_file()]


def job_dir(jobs_dir: Path, job_id: str, owner: str | None = None) -> Path:
    """The folder of job ``job_id``; `JobNotFoundError` for an id that is not 32 hex digits, has no job, or (with
    ``owner``) is another user's job: to them it does not exist."""
    if not JOB_ID.match(job_id or ""):
        raise JobNotFoundError(f"no job {job_id!r}")
    folder = jobs_dir / job_id
    if not (folder / "job.json").is_file():
        raise JobNotFoundError(f"no job {job_id}")
    if owner is not None and read_json(folder / "job.json").get("owner", "local") != owner:
        raise JobNotFoundError(f"no job {job_id}")
    return folder


def list_jobs(jobs_dir: Path, kind: str | None = None, limit: int = 50, owner: str | None = None
              ) -> list[dict[str, Any]]:
    """The newest ``limit`` jobs (of ``kind``, of ``owner``), as their job.json records."""
    records = [read_json(p / "job.json") for p in _job_dirs(jobs_dir)]
    records = [r for r in records if (kind is None or r["kind"] == kind)
               and (owner is None or r.get("owner", "local") == owner)]
    return sorted(records, key=lambda r: r["created"], reverse=True)[:limit]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


# What each kind's flow writes into the job's out/ as its result (a deployment run is read back from it)
RESULT_FILES = {"elucidation": "batch.json", "screening": "summary.json"}
QUEUED_STATES = ("Scheduled", "Late", "Pending", "AwaitingRetry", "AwaitingConcurrencySlot")
ENDED_STATES = ("Failed", "Crashed", "Cancelled", "TimedOut")


def job_state(folder: Path, prefect: Any = None) -> JobState:
    """The job's state from its files; while it runs, Prefect's flow-run state and progress (``prefect``: a
    callable flow_run_id -> (state name, progress, description) or None; None skips Prefect)."""
    if (folder / "result.json").exists():
        run = _run_id(folder)
        return JobState("completed", 1.0, "", run, "Completed")
    if (folder / "error.json").exists():
        return JobState("failed", None, read_json(folder / "error.json").get("error", ""), _run_id(folder), "Failed")
    if _dispatched(folder):
        return _deployment_state(folder, prefect)
    runner = folder / "runner.json"
    if not runner.exists():
        return JobState("submitted", None, "waiting for a runner")
    pid = read_json(runner).get("pid")
    run_id = _run_id(folder)
    if pid is None or not _alive(int(pid)):
        # the runner writes result.json or error.json before it exits; re-check in case it just did
        if any((folder / f).exists() for f in FINAL_FILES):
            return job_state(folder, prefect)
        return JobState("crashed", None, "the runner ended without a result (see runner.log)", run_id)
    if run_id is None:
        return JobState("queued", 0.0, "waiting for a free worker", None)
    found = prefect(run_id) if prefect is not None else None
    if found is None:
        return JobState("running", None, "", run_id)
    name, progress, description = found
    return JobState("running", progress, description or "", run_id, name)


def _dispatched(folder: Path) -> bool:
    """Whether the job is a deployment run on the team's Prefect server (`chemgen.web.runner.dispatch_deployment`)
    rather than a runner process of this server's."""
    try:
        return read_json(folder / "run.json").get("dispatch") == "deployment"
    except (OSError, ValueError):
        return False


def _deployment_state(folder: Path, prefect: Any) -> JobState:
    """A deployment run's state from Prefect; when it has ended, its ending is written into the job's files
    (result.json from the flow's result file, or error.json), so that later reads need no Prefect."""
    run_id = _run_id(folder)
    found = prefect(run_id) if prefect is not None else None
    if found is None:
        return JobState("running", None, "", run_id)
    name, progress, description = found
    if name == "Completed":
        kind = read_json(folder / "job.json")["kind"]
        produced = folder / "out" / RESULT_FILES[kind]
        if produced.is_file():
            write_json(folder / "result.json", read_json(produced))
            return JobState("completed", 1.0, "", run_id, name)
        write_json(folder / "error.json", {"error": f"the flow run completed without {RESULT_FILES[kind]}"})
        return job_state(folder)
    if name in ENDED_STATES:
        write_json(folder / "error.json", {"error": f"the flow run ended {name}" + (f": {description}" if description
                                                                                    else "")})
        return job_state(folder)
    if name in QUEUED_STATES:
        return JobState("queued", 0.0, "waiting for a worker of the pool", run_id, name)
    return JobState("running", progress, description or "", run_id, name)


def _run_id(folder: Path) -> str | None:
    path = folder / "run.json"
    return read_json(path).get("flow_run_id") if path.exists() else None


# One thread reads Prefect for the pages. Its first read starts Prefect's ephemeral server (20 s or more on busy
# cores): a page waits at most PREFECT_WAIT_SECONDS and shows the job's files alone meanwhile. Pages polling the
# same run share one pending read, so polls faster than Prefect answers never pile up.
_PREFECT_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefect-reader")
_PENDING: dict[str, Future] = {}
_PENDING_LOCK = threading.Lock()
PREFECT_WAIT_SECONDS = 5.0


def prefect_flow_run(flow_run_id: str, wait: float = PREFECT_WAIT_SECONDS) -> tuple[str, float | None, str] | None:
    """(state name, progress 0..1 or None, its description) of a flow run in the Prefect store, or None when the
    store cannot be read within ``wait`` seconds (the page then shows the job's files alone)."""
    with _PENDING_LOCK:
        future = _PENDING.get(flow_run_id)
        if future is None:
            future = _PENDING[flow_run_id] = _PREFECT_READER.submit(_read_flow_run, flow_run_id)
            future.add_done_callback(lambda _: _forget(flow_run_id))
    try:
        return future.result(timeout=wait)
    except FutureTimeout:
        return None


def _forget(flow_run_id: str) -> None:
    with _PENDING_LOCK:
        _PENDING.pop(flow_run_id, None)


def warm_up_prefect() -> None:
    """Start the Prefect client (and the ephemeral server) in the reader thread before a page needs it."""
    _PREFECT_READER.submit(_hello)


def _hello() -> None:
    try:
        from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.hello()
    except Exception as error:  # noqa: BLE001 - the pages will say Prefect cannot be read, job by job
        logging.getLogger(__name__).warning("Prefect is not reachable yet: %s", error)


def _read_flow_run(flow_run_id: str) -> tuple[str, float | None, str] | None:
    try:
        from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)
        from prefect.client.orchestration import get_client

        from chemgen.flows.progress import read_progress

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
        progress = read_progress(flow_run_id)
    except Exception as error:  # noqa: BLE001 - a status page must render whatever Prefect does
        logging.getLogger(__name__).warning("cannot read flow run %s from Prefect: %s", flow_run_id, error)
        return None
    fraction, description = progress if progress is not None else (None, "")
    return (run.state.name if run.state else "unknown"), fraction, description


def safe_file(folder: Path, relative: str) -> Path:
    """A file inside ``folder`` named by a URL path: plain names and one sub-folder, no dot-files, no way out
    of the folder; `JobNotFoundError` otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*){0,2}", relative or ""):
        raise JobNotFoundError(f"no file {relative!r}")
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise JobNotFoundError(f"no file {relative!r}")
    return path

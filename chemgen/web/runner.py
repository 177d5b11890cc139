"""Run one web job's flow: ``python -m chemgen.web.runner <job folder>`` (started by `chemgen.web.jobs`).

It writes its pid first, then waits for one of the server's worker slots (a lock file per slot: at most
``workers`` flows run at once, whichever server started them), then runs the job's Prefect flow with the
parameters of its job.json. The flow run's id goes to run.json as soon as Prefect starts it; the result, or the
error that ended it, to result.json / error.json. Heavy imports come after the slot, so a queue of waiting
runners costs little memory.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chemgen.web.jobs import read_json, write_json

POLL_SECONDS = 1.0


@contextmanager
def worker_slot(slots_dir: Path, workers: int) -> Iterator[int]:
    """Hold one of ``workers`` slot locks (blocking until one is free); the lock goes with the process."""
    slots_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(max(1, workers)):
            handle = open(slots_dir / f"slot-{slot}.lock", "a")  # noqa: SIM115 - held for the block
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield slot
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(POLL_SECONDS)


def _record_flow_run(job: Path):
    def hook(flow: Any, flow_run: Any, state: Any) -> None:
        write_json(job / "run.json", {"flow_run_id": str(flow_run.id), "name": flow_run.name})
    return hook


def flow_call(job: Path, record: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The job's flow (with the hook that records its run) and its keyword arguments."""
    params = dict(record["params"])
    out = str(job / "out")
    if record["kind"] == "elucidation":
        from chemgen.flows.elucidate import elucidate_batch as flow

        files = [f"{u['kind']}:{job / u['stored']}" for u in record["uploads"]]
        query = {"files": files, "name": "query"}
        formula = params.pop("formula", None)
        if formula:
            query["formula"] = formula
        if params.get("candidates"):   # stored in the job's folder, named relative to it
            params["candidates"] = str(job / params["candidates"])
        kwargs = {"queries": [query], "out_dir": out, **params}
    elif record["kind"] == "screening":
        from chemgen.flows.screen import crystal_screening as flow

        if params.get("uploads"):   # stored in the job's folder, named relative to it
            params["uploads"] = [str(job / u) for u in params["uploads"]]
        kwargs = {"out_dir": out, **{k: v for k, v in params.items() if v is not None}}
    else:
        raise ValueError(f"{job}: unknown job kind {record['kind']!r}")
    name = f"web-{record['kind']}-{record['id'][:8]}"
    return flow.with_options(flow_run_name=name, on_running=[_record_flow_run(job)]), kwargs


def dispatch_deployment(job: Path) -> str:
    """Submit the job as a run of its flow's ``on-demand`` deployment on the team's Prefect server (PREFECT_API_URL;
    `chemgen services up` registers the deployments), without waiting: a worker of the pool runs it, and the job's
    state is read back from Prefect (`chemgen.web.jobs.job_state`). Returns the flow run's id."""
    from chemgen.flows import settings  # noqa: F401  (Prefect's defaults, before prefect is imported)
    from prefect.deployments import run_deployment

    record = read_json(job / "job.json")
    flow, kwargs = flow_call(job, record)
    run = run_deployment(f"{flow.name}/on-demand", parameters=kwargs, timeout=0,
                         tags=["chemgen-web", f"web-{record['kind']}", f"user-{record.get('owner', 'local')}"],
                         flow_run_name=f"web-{record['kind']}-{record['id'][:8]}")
    write_json(job / "run.json", {"flow_run_id": str(run.id), "name": run.name, "dispatch": "deployment"})
    return str(run.id)


def cancel(job: Path) -> str:
    """Cancel a job: its flow run is set Cancelling (Cancelled while it waits for a worker), and a runner process
    of this server's is stopped. Returns what was done; a finished job is left as it is."""
    import signal

    from chemgen.web.jobs import job_state

    if job_state(job).finished:
        return "already finished"
    run_id = read_json(job / "run.json").get("flow_run_id") if (job / "run.json").exists() else None
    if run_id:
        from chemgen.flows.submit import cancel as cancel_run

        cancel_run(run_id)
    runner = job / "runner.json"
    if runner.exists() and read_json(runner).get("pid"):
        try:
            os.killpg(int(read_json(runner)["pid"]), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if not (job / "result.json").exists():
        write_json(job / "error.json", {"error": "cancelled by its user"})
    return "cancelled"


def run_job(job: Path) -> int:
    record = read_json(job / "job.json")
    write_json(job / "runner.json", {"pid": os.getpid(), "queued": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with worker_slot(job.parent.parent / "slots", int(record.get("workers", 1))):
        try:
            from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)
            from prefect import tags

            flow, kwargs = flow_call(job, record)
            with tags("chemgen-web", f"web-{record['kind']}"):
                result = flow(**kwargs)
        except BaseException as error:  # noqa: BLE001 - every ending is recorded for the page
            from chemgen.errors import ChemgenError

            text = str(error) if isinstance(error, ChemgenError) else f"{type(error).__name__}: {error}"
            write_json(job / "error.json", {"error": text})
            if not isinstance(error, Exception):
                raise
            return 1
    write_json(job / "result.json", result)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not (Path(args[0]) / "job.json").is_file():
        print("usage: python -m chemgen.web.runner <job folder with job.json>", file=sys.stderr)
        return 2
    return run_job(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())

"""Runs of chemgen's deployments on the team's Prefect server, submitted and followed from a command.

Where ``PREFECT_API_URL`` names a server (``eval "$(chemgen services env)"``), ``chemgen run`` does not run the
flow in its own process: it submits a run of the deployment (`chemgen.flows.deploy`), a worker of the pool runs
it when the pool's concurrency limit lets it, and the command follows the run's state on the server until it
ends, or returns at once with ``--no-wait``. Interrupting the command leaves the run going; ``cancel`` stops it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chemgen.errors import ChemgenError, UsageError
from chemgen.flows import settings  # noqa: F401  (Prefect's defaults, before prefect is imported)

POLL_SECONDS = 3.0
FINAL = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


class RunFailed(ChemgenError, RuntimeError):
    """A submitted run that ended in another state than Completed; the message names the state and its reason."""


def server_url() -> str | None:
    """The team's Prefect server, when this shell points at one (not the embedded ephemeral server)."""
    return os.environ.get("PREFECT_API_URL") or None


@dataclass(frozen=True)
class Submitted:
    id: str
    name: str
    deployment: str
    state: str


def submit(deployment: str, parameters: dict[str, Any] | None = None, tags: list[str] | None = None) -> Submitted:
    """Create a run of ``deployment`` (``flow/name``) on the server; a worker picks it up. Raises `UsageError`
    where the server does not answer or does not know the deployment (``chemgen services up`` registers them)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(deployment, parameters=parameters or {}, timeout=0, tags=tags or [])
    except ObjectNotFound:
        raise UsageError(f"the Prefect server at {server_url()} has no deployment {deployment!r}: register them "
                         "with `chemgen services up` (or `prefect deploy --all` from the repository)") from None
    except OSError as error:   # httpx's connection errors are OSErrors underneath
        raise UsageError(f"the Prefect server at {server_url()} does not answer ({error})") from None
    return Submitted(str(run.id), run.name, deployment, run.state.name if run.state else "Scheduled")


def state_of(run_id: str) -> tuple[str, str]:
    """The run's state name and message, read from the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
    return (run.state.name, run.state.message or "") if run.state else ("Scheduled", "")


def follow(run_id: str, log: Callable[[str], None] = print, poll: float = POLL_SECONDS,
           timeout: float | None = None) -> str:
    """Report the run's state as it changes until it ends; returns the final state (Completed), raises `RunFailed`
    for any other ending and `TimeoutError` after ``timeout`` seconds (the run goes on)."""
    start, last = time.monotonic(), None
    while True:
        name, message = state_of(run_id)
        if name != last:
            log(f"{time.monotonic() - start:6.0f} s  {name}" + (f": {message}" if message and name in FINAL else ""))
            last = name
        if name in FINAL:
            if name != "Completed":
                raise RunFailed(f"flow run {run_id} ended {name}" + (f": {message}" if message else ""))
            return name
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"flow run {run_id} still {name} after {timeout:.0f} s")
        time.sleep(poll)


def cancel(run_id: str) -> str:
    """Cancel a run: Cancelled at once while it waits for a worker, Cancelling (the worker stops it) once it runs."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Cancelling

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
        waiting = run.state is None or run.state.name in ("Scheduled", "Late", "Pending", "AwaitingRetry")
        state = Cancelled() if waiting else Cancelling()
        client.set_flow_run_state(run.id, state, force=True)
    return state.name


def rerun(run_id: str, tags: list[str] | None = None) -> Submitted:
    """A new run of the deployment that ``run_id`` was a run of, with the same parameters: what completes a run
    that crashed (its worker died) or failed on something since fixed. Prefect's own retries cover failures inside
    a live process; a killed process has no one left to retry it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(run_id))
        if run.deployment_id is None:
            raise UsageError(f"flow run {run_id} was not a run of a deployment: run its flow again instead")
        deployment = client.read_deployment(run.deployment_id)
        flow = client.read_flow(deployment.flow_id)
    return submit(f"{flow.name}/{deployment.name}", dict(run.parameters), tags=[*(tags or []), f"rerun-of-{run_id[:8]}"])

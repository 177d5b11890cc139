"""A flow run's progress as a Prefect progress artifact, for the web app (and Prefect's UI) to show.

Inside a flow run, `FlowProgress` creates one progress artifact of that run and `FlowProgress.update` moves it
(a fraction 0..1 here; Prefect stores a percentage 0..100). Outside a flow run it does nothing. Progress is a
courtesy: a failure of Prefect's artifact API is logged once, as a warning, and never fails the flow.
`read_progress` reads a run's newest progress artifact back::

    progress = FlowProgress("generating")        # in the flow's body
    progress.update(0.5, "half way")
    read_progress(flow_run_id)                  # (0.5, "half way"), from anywhere that reaches the API
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from chemgen.flows import settings  # noqa: F401  (Prefect's embedded defaults, before prefect is imported)


def _logger() -> Any:
    """The flow run's logger (its warnings show with the run) where there is one, else this module's."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - no run context
        return logging.getLogger(__name__)


class FlowProgress:
    """The progress of the current flow run: created at 0 with ``description``; ``update(fraction,
    description)`` moves it. A no-op outside a flow run. A failed call is tried again at the next update (a
    blip of the API loses one step), and warned about once."""

    def __init__(self, description: str = "starting") -> None:
        from prefect.runtime import flow_run

        self.artifact_id: UUID | None = None
        self._warned = False
        if not flow_run.id:
            return
        try:
            from prefect.artifacts import create_progress_artifact

            # _sync: the flows are sync, but a caller's event loop must not turn this into a coroutine
            self.artifact_id = create_progress_artifact(0.0, key=None, description=description, _sync=True)
        except Exception as error:  # noqa: BLE001 - progress never fails a flow
            self._warn(error)

    def update(self, fraction: float, description: str) -> None:
        """Set the progress to ``fraction`` (clipped to 0..1) with ``description``."""
        if self.artifact_id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, progress=100.0 * min(max(float(fraction), 0.0), 1.0),
                                     description=description, _sync=True)
        except Exception as error:  # noqa: BLE001 - progress never fails a flow
            self._warn(error)

    def _warn(self, error: BaseException) -> None:
        # one warning per flow run, not one per update: a down API would otherwise flood the log
        if not self._warned:
            self._warned = True
            _logger().warning("progress not reported (%s: %s); the flow goes on", type(error).__name__, error)


def read_progress(flow_run_id: str | UUID) -> tuple[float, str] | None:
    """(fraction 0..1, description) of the flow run's newest progress artifact, or None if it has none."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    run_id = flow_run_id if isinstance(flow_run_id, UUID) else UUID(str(flow_run_id))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                                           type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    if not artifacts or artifacts[0].data is None:
        return None
    # a progress artifact's data is Prefect's percentage
    return float(artifacts[0].data) / 100.0, artifacts[0].description or ""

"""Deployments of chemgen's flows.

``chemgen flows serve`` serves all of them from this process (no work pool needed):
the nightly retraining on a cron schedule, screening and curation on demand. Teams with a
Prefect server use ``prefect.yaml`` (process or Kubernetes work pools) instead.
"""

from __future__ import annotations

from workflows import settings  # noqa: F401

from prefect import serve

from workflows.curate import curate_all
from workflows.retrain import nightly_retrain
from workflows.screen import crystal_screening
from workflows.spectra import curate_spectra_flow

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every night, server time zone


def deployments(profile: str = "nightly", cron: str = NIGHTLY_CRON) -> list:
    return [
        nightly_retrain.to_deployment(name="nightly", cron=cron, parameters={"profile": profile},
                                      tags=["chemgen", "retrain"]),
        crystal_screening.to_deployment(name="on-demand", tags=["chemgen", "screening"]),
        curate_all.to_deployment(name="on-demand", tags=["chemgen", "data"]),
        curate_spectra_flow.to_deployment(name="on-demand", tags=["chemgen", "data", "spectra"],
                                          parameters={"workers": 1}),
    ]


def serve_all(profile: str = "nightly", cron: str = NIGHTLY_CRON) -> None:
    """Serve every deployment until interrupted."""
    serve(*deployments(profile, cron))

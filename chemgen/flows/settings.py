"""Embedded defaults for Prefect, set before Prefect is imported.

Without a ``PREFECT_API_URL`` Prefect runs an ephemeral server on a project-local SQLite
database under ``$CHEMGEN_HOME/prefect``. On 2 busy cores that server can take over 20 s
to start, so the start-up timeout is raised. Teams point ``PREFECT_API_URL`` at their
Prefect server or Cloud and the same flows run there.
"""

from __future__ import annotations

import os

from chemgen.paths import chemgen_home


def configure_prefect() -> None:
    defaults = {
        "PREFECT_HOME": str(chemgen_home() / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # SQLite cannot create the folder itself


configure_prefect()

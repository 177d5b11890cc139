"""Where chemgen keeps its local state: ``$CHEMGEN_HOME`` (default ``./.chemgen``)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CHEMGEN_HOME"


def chemgen_home() -> Path:
    """Datasets, MLflow's SQLite store and artifacts, caches and packs live under this folder."""
    return Path(os.environ.get(HOME_ENV, ".chemgen")).resolve()

"""What a chemgen web server may accept and where it keeps its jobs (one frozen record, read once at start)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chemgen.paths import chemgen_home, source_checkout

DEFAULT_HOST = "127.0.0.1"            # this machine only unless the operator asks otherwise
DEFAULT_PORT = 8765
MAX_UPLOAD_BYTES = 5_000_000          # per file: a 3,501-point spectrum is ~100 kB; JCAMP-DX of a scan rarely 1 MB
MAX_SCREENING_CANDIDATES = 1_000      # per job: relaxing more on a CPU server takes hours
MAX_USER_CANDIDATES = 500             # per elucidation job: GFN2-xTB spectra take seconds to a minute a molecule
THREEDMOL_ENV = "CHEMGEN_3DMOL_JS"
MLFLOW_UI_ENV = "CHEMGEN_MLFLOW_UI_URL"


def default_3dmol() -> Path | None:
    """3Dmol.js from the npm package that `make install` puts in the checkout (``node_modules/3dmol``), or the
    file ``$CHEMGEN_3DMOL_JS`` names (an installed wheel has no checkout). None: the 3D views say how to get it."""
    if os.environ.get(THREEDMOL_ENV):
        return Path(os.environ[THREEDMOL_ENV])
    checkout = source_checkout()
    candidate = checkout / "node_modules" / "3dmol" / "build" / "3Dmol-min.js" if checkout else None
    return candidate if candidate is not None and candidate.is_file() else None


@dataclass(frozen=True)
class WebSettings:
    """``home``: the jobs' folders; ``workers``: flow runs at once (each uses every core torch is given);
    ``elucidation`` / ``screening``: flow parameters every job of that kind gets (a user sets only what the form
    offers); ``start_jobs``: False leaves submitted jobs for a later server (tests of the upload path);
    ``auth``, ``auth_header``, ``trusted_proxies``, ``jobs_per_minute``: who may use it (`chemgen.web.auth`)."""

    home: Path = field(default_factory=lambda: chemgen_home() / "web")
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_files: int = 3                # one IR and one Raman spectrum per molecule, and a candidates file
    max_user_candidates: int = MAX_USER_CANDIDATES
    workers: int = 1
    elucidation_model: str = "models:/chemgen-diffspectra@champion"
    elucidation: dict[str, Any] = field(default_factory=lambda: {"samples": 32, "steps": 100, "top_k": 10, "rerank": True})
    screening: dict[str, Any] = field(default_factory=dict)
    max_screening_candidates: int = MAX_SCREENING_CANDIDATES
    threedmol_js: Path | None = field(default_factory=default_3dmol)
    mlflow_ui_url: str | None = field(default_factory=lambda: os.environ.get(MLFLOW_UI_ENV) or None)
    start_jobs: bool = True
    auth: str = "none"                # none | token | proxy (`chemgen.web.auth`)
    auth_header: str = "X-Forwarded-User"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    jobs_per_minute: int = 10         # per user
    retention_days: float | None = None   # finished jobs older than this are deleted with their files (None: kept)
    dispatch: str = "runner"          # runner: a process of this server's per job; deployment: the Prefect pool's

    def __post_init__(self) -> None:
        from chemgen.errors import UsageError
        from chemgen.web.auth import MODES

        if self.auth not in MODES:
            raise UsageError(f"auth must be one of {', '.join(MODES)}, got {self.auth!r}")
        if self.dispatch not in ("runner", "deployment"):
            raise UsageError(f"dispatch must be runner or deployment, got {self.dispatch!r}")
        if self.retention_days is not None and not self.retention_days > 0:
            raise UsageError(f"retention_days must be above 0, got {self.retention_days}")
        if self.jobs_per_minute < 1:
            raise UsageError(f"jobs_per_minute must be at least 1, got {self.jobs_per_minute}")

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

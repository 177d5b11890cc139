"""The main job behind ``chemgen run`` / ``make run``.

Until the generative models and flows land, the main job curates QM9 and MP-20 into
the store and prints what it holds. The ``demo`` profile curates small slices so it
finishes in about a minute on 2 cores; ``full`` curates every row.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from chemgen.data import BUILDERS
from chemgen.data.store import curate
from chemgen.data.summary import print_curation

PROFILES: dict[str, dict[str, int | None]] = {
    "demo": {"qm9": 2_000, "mp20": 300},   # rows per source file
    "full": {"qm9": None, "mp20": None},
}


def run_main(profile: str = "demo", store: Path | None = None, data_dir: Path | None = None,
             console: Console | None = None) -> dict[str, str]:
    """Curate the datasets of a profile; returns ``{dataset: version}``."""
    console = console or Console()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    start = time.perf_counter()
    versions = {}
    for name, limit in PROFILES[profile].items():
        kwargs = {"limit": limit} if name == "qm9" else {"limit": limit, "data_dir": data_dir}
        result = curate(BUILDERS[name](**kwargs), root=store)
        print_curation(result, console)
        versions[name] = result.version
    console.print(f"[bold green]main job ({profile}) done[/] in {time.perf_counter() - start:.1f} s: "
                  + ", ".join(f"{k}@{v}" for k, v in versions.items()))
    return versions

"""Keep the main job's terminal for chemgen: libraries' prints, warnings, tips and progress bars go to a log file."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def output_to_log(path: Path) -> Iterator[TextIO]:
    """Send everything written to file descriptors 1 and 2 to ``path`` (appended) while the block runs.

    This catches what no logging setting reaches: Lightning's tips, deprecation warnings, MLflow's
    prints and tqdm bars, child processes (Prefect's server). Yields a text stream on the real
    terminal for chemgen's own output.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(path, "a") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()

"""What a flow run is doing, one line at a time, for a terminal that waits on it.

Tasks run in worker processes (the nightly flow's branches run side by side), so their news travels through a file
rather than memory: `RunEvents.say` appends one JSON line (a single ``write`` of a short line in append mode, which
the kernel does not interleave with another process's), and `follow` reads the lines as they arrive and hands
each to a callback, until told to stop. The flow's own logs keep the same lines (they are printed too).

    events = RunEvents(path)
    events.say("adit", "challenger trained: 40 steps in 0.3 min")
    with follow(path, lambda e: console.print(f"{e.source}: {e.message}")):
        nightly_retrain(..., events=str(path))
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Event:
    time: float       # seconds since the epoch
    source: str       # who speaks: a model's branch, "flow"
    message: str


class RunEvents:
    """Appends events to ``path`` (None: only prints them, for the flow's log)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None

    def say(self, source: str, message: str) -> None:
        print(f"{source}: {message}")   # the flow run's log (log_prints)
        if self.path is None:
            return
        line = json.dumps({"time": time.time(), "source": source, "message": message}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)


def read_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[Event], int]:
    """The complete lines after byte ``offset`` as events, and the offset after the last complete one."""
    path = Path(path)
    if not path.is_file():
        return [], offset
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1   # a line still being written waits for the next read
    events = [Event(**json.loads(line)) for line in data[:end].decode("utf-8").splitlines() if line.strip()]
    return events, offset + end


@contextmanager
def follow(path: str | os.PathLike, show: Callable[[Event], None], every: float = 0.5) -> Iterator[None]:
    """Call ``show`` with each event appended to ``path`` while the block runs (from a background thread), and
    with the last ones once it ends."""
    stop = threading.Event()
    offset = 0

    def drain() -> None:
        nonlocal offset
        events, offset = read_events(path, offset)
        for event in events:
            show(event)

    def poll() -> None:
        while not stop.wait(every):
            drain()

    thread = threading.Thread(target=poll, name="chemgen-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        drain()

"""A flow's events file: lines appended by any process, read back whole and in order, followed while a job runs."""

from __future__ import annotations

import time

from chemgen.flows.events import RunEvents, follow, read_events


def test_events_are_read_back_in_order_and_a_half_written_line_waits(tmp_path):
    path = tmp_path / "events.jsonl"
    events = RunEvents(path)
    events.say("flow", "curating qm9")
    events.say("adit", "training")
    with open(path, "a") as handle:
        handle.write('{"time": 1.0, "source": "gfmdiff", "mess')    # a writer in the middle of its line
    said, offset = read_events(path)
    assert [(e.source, e.message) for e in said] == [("flow", "curating qm9"), ("adit", "training")]
    with open(path, "a") as handle:
        handle.write('age": "done"}\n')
    rest, end = read_events(path, offset)
    assert [(e.source, e.message) for e in rest] == [("gfmdiff", "done")] and end == path.stat().st_size


def test_follow_shows_what_arrives_while_the_block_runs_and_the_last_lines_after(tmp_path):
    path = tmp_path / "events.jsonl"
    shown = []
    with follow(path, lambda e: shown.append(e.message), every=0.05):
        RunEvents(path).say("adit", "one")
        deadline = time.monotonic() + 5
        while not shown and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shown == ["one"]                       # seen while the block was still running
        RunEvents(path).say("adit", "two")
    assert shown == ["one", "two"]                    # the last line, drained at the end


def test_events_without_a_file_only_print(capsys):
    RunEvents(None).say("flow", "hello")
    assert capsys.readouterr().out == "flow: hello\n"

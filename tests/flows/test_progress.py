"""A flow run's progress artifact on the ephemeral Prefect API: created, moved, read back; nothing outside a run,
and a broken artifact API never fails the flow."""

from __future__ import annotations

from chemgen.flows import progress  # noqa: I001  (first: it sets Prefect's embedded defaults before prefect loads)

from prefect import flow
from prefect.runtime import flow_run


def test_flow_progress_is_read_back_as_the_last_fraction_and_description():
    @flow
    def counting(n: int) -> str:
        tracker = progress.FlowProgress("starting")
        for i in range(1, n + 1):
            tracker.update(i / n, f"step {i} of {n}")
        return str(flow_run.id)

    run_id = counting(3)
    assert progress.read_progress(run_id) == (1.0, "step 3 of 3")

    @flow
    def silent() -> str:
        return str(flow_run.id)

    assert progress.read_progress(silent()) is None  # a run without a progress artifact


def test_flow_progress_does_nothing_outside_a_flow_run_and_never_fails_one(monkeypatch, caplog):
    outside = progress.FlowProgress("outside")
    outside.update(0.5, "nothing to update")
    assert outside.artifact_id is None

    import prefect.artifacts

    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("artifact API down")

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", broken)

    @flow
    def resilient() -> str:
        tracker = progress.FlowProgress("starting")
        tracker.update(0.5, "half")
        tracker.update(1.0, "done")
        return str(flow_run.id)

    run_id = resilient()
    assert len(calls) == 2  # each update tried, one warning
    assert [r.message for r in caplog.records if "progress not reported" in r.message] == [
        "progress not reported (RuntimeError: artifact API down); the flow goes on"]
    assert progress.read_progress(run_id) == (0.0, "starting")

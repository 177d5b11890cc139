"""The promotion gate's decisions, table-driven (no registry needed)."""

from __future__ import annotations

import pytest

from chemgen.gates import decide

GATE = ("a", "b")


@pytest.mark.parametrize("challenger, champion, promote, reason", [
    ({"a": 0.5, "b": 0.5}, None, True, "first version"),
    ({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}, False, "no gate metric improves"),
    ({"a": 0.6, "b": 0.5}, {"a": 0.5, "b": 0.5}, True, "beats the champion on a"),
    ({"a": 0.6, "b": 0.7}, {"a": 0.5, "b": 0.5}, True, "beats the champion on a, b"),
    ({"a": 0.9, "b": 0.4}, {"a": 0.5, "b": 0.5}, False, "worse than the champion on b"),
    ({"a": 0.4, "b": 0.4}, {"a": 0.5, "b": 0.5}, False, "worse than the champion on a"),
    ({"a": 0.9}, {"a": 0.5, "b": 0.5}, False, "lacks gate metric"),
    ({"a": float("nan"), "b": 0.9}, None, False, "lacks gate metric"),
])
def test_gate_decisions(challenger, champion, promote, reason):
    decision = decide(GATE, challenger, champion)
    assert decision.promote is promote and reason in decision.reason, decision.reason

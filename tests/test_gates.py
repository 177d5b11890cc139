"""The promotion gate: table-driven decisions, and a false-promotion rate near 5 % for equal models."""

from __future__ import annotations

import numpy as np
import pytest

from chemgen.gates import Evaluation, decide, two_proportion_z

GATE = ("a", "b")
CONTEXT = {"profile": "demo", "samples": "200"}


def ev(a: float, b: float | None = None, n: int = 200, context=CONTEXT) -> Evaluation:
    return Evaluation({"a": a, **({"b": b} if b is not None else {})}, n, dict(context))


@pytest.mark.parametrize("challenger, champion, promote, reason", [
    (ev(0.5, 0.5), None, True, "first version"),
    (ev(0.5, 0.5), ev(0.5, 0.5), False, "not better beyond the one-sided 95 % bound"),
    (ev(0.52, 0.5), ev(0.5, 0.5), False, "not better beyond"),                 # within noise at n = 200
    (ev(0.65, 0.5), ev(0.5, 0.5), True, "beats the champion on a"),
    (ev(0.65, 0.48), ev(0.5, 0.5), True, "not worse on the others"),          # b lower, but within noise
    (ev(0.9, 0.3), ev(0.5, 0.5), False, "worse than the champion beyond the 95 % bound on b"),
    (ev(0.9, 0.5, context={"profile": "nightly"}), ev(0.5, 0.5), False, "another context"),
    (ev(0.9, 0.5, n=None), ev(0.5, 0.5), False, "sample counts"),
    (ev(0.9), ev(0.5, 0.5), False, "lacks gate metric"),
    (Evaluation({"a": float("nan"), "b": 0.9}, 200), None, False, "lacks gate metric"),
])
def test_gate_decisions(challenger, champion, promote, reason):
    decision = decide(GATE, challenger, champion)
    assert decision.promote is promote and reason in decision.reason, decision.reason


def test_two_proportion_z_matches_the_textbook_value():
    # 0.60 of 200 vs 0.50 of 200: pooled 0.55, se = sqrt(0.55 * 0.45 * 2 / 200) = 0.04975
    assert two_proportion_z(0.6, 200, 0.5, 200) == pytest.approx(0.1 / 0.049749, rel=1e-4)
    assert two_proportion_z(1.0, 10, 1.0, 10) == 0.0


def test_equal_models_are_promoted_about_5_percent_of_the_time():
    """Draw both models' rates from the same truth, 4,000 times: the gate crowns noise at most ~5 %."""
    rng = np.random.default_rng(0)
    n, truth, trials = 200, {"a": 0.5, "b": 0.8}, 4000
    promoted = 0
    for _ in range(trials):
        draw = lambda: Evaluation({m: rng.binomial(n, p) / n for m, p in truth.items()}, n, CONTEXT)  # noqa: E731
        promoted += decide(GATE, draw(), draw()).promote
    assert 0.02 <= promoted / trials <= 0.06, promoted / trials


def test_a_truly_better_model_is_usually_promoted():
    rng = np.random.default_rng(1)
    n, wins = 1000, 0
    for _ in range(500):
        better = Evaluation({"a": rng.binomial(n, 0.58) / n, "b": rng.binomial(n, 0.8) / n}, n, CONTEXT)
        champion = Evaluation({"a": rng.binomial(n, 0.5) / n, "b": rng.binomial(n, 0.8) / n}, n, CONTEXT)
        wins += decide(GATE, better, champion).promote
    # +8 points at n = 1,000: z = 3.6, power 0.97, times 0.95 for b not falsely "worse": about 0.92.
    assert wins / 500 > 0.85

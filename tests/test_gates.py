"""The promotion gate: table-driven decisions, and a false-promotion rate near 5 % for equal models."""

from __future__ import annotations

import numpy as np
import pytest

from chemgen.errors import ChemgenError
from chemgen.gates import Evaluation, GateError, decide, two_proportion_z

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
    # A champion without gate metrics (promoted by hand) or with a NaN one is never beaten by default.
    (ev(0.02, 0.10), Evaluation({}, None, {}), False, "the champion has no gate metrics"),
    (ev(0.02, 0.10), Evaluation({}, 200, dict(CONTEXT)), False, "the champion has no gate metrics"),
    (ev(0.9, 0.9), ev(float("nan"), 0.5), False, "the champion lacks gate metric(s) ['a']"),
    (ev(0.9, 0.9), ev(0.5, float("nan")), False, "the champion lacks gate metric(s) ['b']"),
    # The champion's numbers that are no rates hold the challenger back, naming the metric and the value.
    (ev(0.9, 0.9), ev(1.7, 0.5), False, "champion's gate metric a = 1.7 lies outside [0, 1]"),
    (ev(0.9, 0.9), ev(True, 0.5), False, "champion's gate metric a = True is not a number"),
    (ev(0.9, 0.9), ev("0.5", 0.5), False, "champion's gate metric a = '0.5' is not a number"),
    (ev(0.9, 0.9), Evaluation({"a": 0.5, "b": None}, 200, CONTEXT), False, "champion's gate metric b = None"),
    (ev(0.9, 0.9), ev(0.5, 0.5, n=0), False, "champion's sample count 0 is not a positive whole number"),
    # Better only beyond the bound: never by a rounding residue.
    (ev(0.5 + 1e-12, 0.5), ev(0.5, 0.5), False, "not better beyond"),
    (ev(1e-12, 0.5), ev(0.0, 0.5), False, "not better beyond"),
    (ev(1.0, 0.5), ev(1 - 1e-16, 0.5), False, "not better beyond"),     # pools to exactly 1.0: variance 0
    (ev(1.0, 0.5), ev(1.0, 0.5), False, "not better beyond"),
    (ev(0.9, 1 - 1e-16), ev(0.5, 1.0), True, "beats the champion on a"),  # nor "worse" on b by a residue
    (ev(0.9, 0.5, n=None), ev(0.5, 0.5), False, "sample counts"),
    (ev(0.9), ev(0.5, 0.5), False, "lacks gate metric"),
    (Evaluation({"a": float("nan"), "b": 0.9}, 200), None, False, "lacks gate metric"),
])
def test_gate_decisions(challenger, champion, promote, reason):
    decision = decide(GATE, challenger, champion)
    assert decision.promote is promote and reason in decision.reason, decision.reason


@pytest.mark.parametrize("value, problem", [
    (1.7, "a = 1.7 lies outside [0, 1]"), (-0.1, "a = -0.1 lies outside [0, 1]"), (float("inf"), "a = inf lies outside"),
    (True, "a = True is not a number"), (False, "a = False is not a number"), ("0.5", "a = '0.5' is not a number"),
    (None, "a = None is not a number"),
])
def test_a_challenger_metric_that_is_not_a_rate_raises_naming_it(value, problem):
    with pytest.raises(GateError, match=problem.replace("[", r"\[").replace("]", r"\]")) as caught:
        decide(GATE, Evaluation({"a": value, "b": 0.5}, 200, CONTEXT), ev(0.5, 0.5))
    assert isinstance(caught.value, ChemgenError) and "challenger's gate metric" in str(caught.value)


@pytest.mark.parametrize("samples", [0, -5, 2.5, True, "200"])
def test_a_challenger_sample_count_that_is_not_a_count_raises(samples):
    with pytest.raises(GateError, match="challenger's sample count"):
        decide(GATE, Evaluation({"a": 0.9, "b": 0.5}, samples, CONTEXT), ev(0.5, 0.5))


def test_numpy_rates_and_counts_are_numbers():
    challenger = Evaluation({"a": np.float64(0.7), "b": np.float32(0.5)}, np.int64(200), CONTEXT)
    assert decide(GATE, challenger, ev(0.5, 0.5)).promote


def test_two_proportion_z_matches_the_textbook_value():
    # 0.60 of 200 vs 0.50 of 200: pooled 0.55, se = sqrt(0.55 * 0.45 * 2 / 200) = 0.04975
    assert two_proportion_z(0.6, 200, 0.5, 200) == pytest.approx(0.1 / 0.049749, rel=1e-4)
    assert two_proportion_z(1.0, 10, 1.0, 10) == 0.0
    assert two_proportion_z(1.0, 200, 1 - 1e-16, 200) == 0.0  # pooled rounds to 1.0: no evidence either way


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

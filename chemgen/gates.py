"""Promotion gates: when a new registered version may become ``champion``.

Each registered model names its gate metrics, the first being the primary one; all are rates in
[0, 1] measured on ``samples`` generated structures (per kind). A challenger is promoted when there
is no champion yet, or when, evaluated in the same context (profile, sample count, sampling steps,
seed, reference dataset versions),

* its primary metric is higher beyond a one-sided 95 % bound, and
* no other gate metric is lower beyond its one-sided 95 % bound,

by a pooled two-proportion z-test on the two models' rates. With 200 samples a rate near 0.5 has a
standard error of about 0.035, so "at least as good on every metric" would be decided by noise: an
equal challenger would be crowned far more often than 5 % of the time. Gate metrics, the sample count
and the context are stored as tags on each model version, so the decision needs only the registry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist

from chemgen import tracking

# Higher is better for every gate metric; the first is the primary one.
GATES: dict[str, tuple[str, ...]] = {
    "chemgen-adit": ("molecule/edm/validity", "molecule/edm/atom_stability", "crystal/cdvae/valid"),
}
ALPHA = 0.05                                   # one-sided
TAG_PREFIX = "gate.metric."
SAMPLES_TAG = "gate.samples"
CONTEXT_TAG = "gate.context"
DECISION_TAG = "gate.decision"


@dataclass(frozen=True)
class Evaluation:
    """What a version scored, on how many samples, in which context."""

    metrics: dict[str, float]
    samples: int | None = None
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger: dict[str, float]
    champion: dict[str, float] | None
    z: dict[str, float] = field(default_factory=dict)


def gate_metrics_for(name: str) -> tuple[str, ...]:
    for registered, metrics in GATES.items():
        if name == registered or name.startswith(registered + "-"):
            return metrics
    raise KeyError(f"no promotion gate defined for model {name!r} (known: {', '.join(GATES)})")


def two_proportion_z(p_new: float, n_new: int, p_old: float, n_old: int) -> float:
    """Pooled two-proportion z statistic of p_new - p_old (positive: the new rate is higher)."""
    pooled = (p_new * n_new + p_old * n_old) / (n_new + n_old)
    variance = pooled * (1 - pooled) * (1 / n_new + 1 / n_old)
    if variance <= 0:
        return 0.0 if p_new == p_old else math.copysign(math.inf, p_new - p_old)
    return (p_new - p_old) / math.sqrt(variance)


def decide(gate: tuple[str, ...], challenger: Evaluation, champion: Evaluation | None,
           alpha: float = ALPHA) -> GateDecision:
    ours = {m: challenger.metrics.get(m, float("nan")) for m in gate}
    missing = [m for m in gate if not math.isfinite(ours[m])]
    if missing:
        return GateDecision(False, f"challenger lacks gate metric(s) {missing}", ours, None)
    if champion is None:
        return GateDecision(True, "first version: no champion yet", ours, None)
    theirs = {m: champion.metrics.get(m, float("nan")) for m in gate}
    if challenger.context != champion.context:
        differ = sorted(k for k in set(challenger.context) | set(champion.context)
                        if challenger.context.get(k) != champion.context.get(k))
        return GateDecision(False, f"evaluated in another context than the champion ({', '.join(differ)}): "
                                   "not comparable, promote by hand if wanted", ours, theirs)
    if not challenger.samples or not champion.samples or not all(math.isfinite(v) for v in theirs.values()):
        return GateDecision(False, "sample counts or champion metrics missing: not comparable", ours, theirs)
    bound = NormalDist().inv_cdf(1 - alpha)
    z = {m: two_proportion_z(ours[m], challenger.samples, theirs[m], champion.samples) for m in gate}
    worse = [m for m in gate if z[m] < -bound]
    if worse:
        return GateDecision(False, "worse than the champion beyond the 95 % bound on " + ", ".join(
            f"{m} ({ours[m]:.4f} < {theirs[m]:.4f}, z = {z[m]:.2f})" for m in worse), ours, theirs, z)
    primary = gate[0]
    if z[primary] <= bound:
        return GateDecision(False, f"{primary} not better beyond the one-sided 95 % bound "
                                   f"({ours[primary]:.4f} vs {theirs[primary]:.4f}, z = {z[primary]:.2f} <= "
                                   f"{bound:.2f})", ours, theirs, z)
    return GateDecision(True, f"beats the champion on {primary} ({ours[primary]:.4f} vs {theirs[primary]:.4f}, "
                              f"z = {z[primary]:.2f}) and is not worse on the others", ours, theirs, z)


def record(name: str, version: str | int, evaluation: Evaluation) -> None:
    client = tracking.client()
    for metric in gate_metrics_for(name):
        if metric in evaluation.metrics:
            client.set_model_version_tag(name, str(version), TAG_PREFIX + metric,
                                         repr(float(evaluation.metrics[metric])))
    if evaluation.samples:
        client.set_model_version_tag(name, str(version), SAMPLES_TAG, str(int(evaluation.samples)))
    client.set_model_version_tag(name, str(version), CONTEXT_TAG, json.dumps(evaluation.context, sort_keys=True))


def recorded(name: str, version: str | int) -> dict[str, float]:
    tags = tracking.client().get_model_version(name, str(version)).tags
    return {k[len(TAG_PREFIX):]: float(v) for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def recorded_evaluation(name: str, version: str | int) -> Evaluation:
    tags = tracking.client().get_model_version(name, str(version)).tags
    samples = int(tags[SAMPLES_TAG]) if SAMPLES_TAG in tags else None
    context = json.loads(tags[CONTEXT_TAG]) if CONTEXT_TAG in tags else {}
    return Evaluation(recorded(name, version), samples, context)


def evaluate_and_promote(name: str, version: str | int, evaluation: Evaluation,
                         champion_evaluation: Evaluation | None = None) -> GateDecision:
    """Record the challenger's evaluation, compare with the champion's, move ``champion`` if it wins.

    ``champion_evaluation`` is the champion scored in the same run (same seeds); without it, the scores
    recorded on the champion's version are used (and compared only if their context is the same)."""
    record(name, version, evaluation)
    champion = tracking.version_by_alias(name, tracking.CHAMPION)
    if champion is None:
        champion_evaluation = None
    elif champion_evaluation is None:
        champion_evaluation = recorded_evaluation(name, champion.version)
    decision = decide(gate_metrics_for(name), evaluation, champion_evaluation)
    if decision.promote:
        tracking.promote(name, version)
    client = tracking.client()
    client.set_model_version_tag(name, str(version), DECISION_TAG, ("promoted: " if decision.promote else "held: ")
                                 + decision.reason)
    return decision

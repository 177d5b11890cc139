"""Promotion gates: when a new registered version may become ``champion``.

Each registered model names its gate metrics. A challenger is promoted when there is no
champion yet, or when it is at least as good on every gate metric and strictly better on
one. Gate metrics are stored as tags on each model version (``gate.metric.<metric>``), so the
decision needs nothing but the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chemgen import tracking

# Higher is better for every gate metric.
GATES: dict[str, tuple[str, ...]] = {
    "chemgen-adit": ("molecule/edm/validity", "molecule/edm/atom_stability", "crystal/cdvae/valid"),
}
TAG_PREFIX = "gate.metric."
DECISION_TAG = "gate.decision"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger: dict[str, float]
    champion: dict[str, float] | None


def gate_metrics_for(name: str) -> tuple[str, ...]:
    for registered, metrics in GATES.items():
        if name == registered or name.startswith(registered + "-"):
            return metrics
    raise KeyError(f"no promotion gate defined for model {name!r} (known: {', '.join(GATES)})")


def decide(gate: tuple[str, ...], challenger: dict[str, float], champion: dict[str, float] | None) -> GateDecision:
    """Promote when there is no champion, or the challenger is >= on all gate metrics and > on one."""
    missing = [m for m in gate if not math.isfinite(challenger.get(m, float("nan")))]
    ours = {m: challenger.get(m, float("nan")) for m in gate}
    if missing:
        return GateDecision(False, f"challenger lacks gate metric(s) {missing}", ours, champion)
    if champion is None:
        return GateDecision(True, "first version: no champion yet", ours, None)
    worse = [m for m in gate if ours[m] < champion.get(m, float("-inf"))]
    better = [m for m in gate if ours[m] > champion.get(m, float("-inf"))]
    if worse:
        return GateDecision(False, "worse than the champion on " + ", ".join(
            f"{m} ({ours[m]:.4f} < {champion[m]:.4f})" for m in worse), ours, champion)
    if not better:
        return GateDecision(False, "no gate metric improves on the champion", ours, champion)
    return GateDecision(True, "beats the champion on " + ", ".join(better), ours, champion)


def record(name: str, version: str | int, metrics: dict[str, float]) -> None:
    client = tracking.client()
    for metric in gate_metrics_for(name):
        if metric in metrics:
            client.set_model_version_tag(name, str(version), TAG_PREFIX + metric, repr(float(metrics[metric])))


def recorded(name: str, version: str | int) -> dict[str, float]:
    tags = tracking.client().get_model_version(name, str(version)).tags
    return {k[len(TAG_PREFIX):]: float(v) for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def evaluate_and_promote(name: str, version: str | int, metrics: dict[str, float]) -> GateDecision:
    """Record the challenger's gate metrics, compare with the champion, move ``champion`` if it wins."""
    record(name, version, metrics)
    champion = tracking.version_by_alias(name, tracking.CHAMPION)
    champion_metrics = recorded(name, champion.version) if champion is not None else None
    decision = decide(gate_metrics_for(name), metrics, champion_metrics)
    if decision.promote:
        tracking.promote(name, version)
    client = tracking.client()
    client.set_model_version_tag(name, str(version), DECISION_TAG, ("promoted: " if decision.promote else "held: ")
                                 + decision.reason)
    return decision

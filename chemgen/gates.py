"""Promotion gates: when a new registered version may become ``champion``.

Each registered model names its gate metrics, the first being the primary one; all are rates in
[0, 1] measured on ``samples`` generated structures (per kind). A challenger is promoted when there
is no champion yet, or when, evaluated in the same context (profile, sample count, sampling steps,
seed, reference dataset versions, scoring version),

* its primary metric is higher beyond a one-sided 95 % bound, and
* no other gate metric is lower beyond its one-sided 95 % bound,

by a pooled two-proportion z-test on the two models' rates. With 200 samples a rate near 0.5 has a
standard error of about 0.035, so "at least as good on every metric" would be decided by noise: an
equal challenger would be crowned far more often than 5 % of the time. Gate metrics, the sample count
and the context are stored as tags on each model version, so the decision needs only the registry.

When the two cannot be compared (the champion was promoted by hand or registered outside the gate and
has no gate metrics, it was scored in another context, or its numbers are not rates), the champion is
kept and the new version stays a challenger, with the reason recorded: a gate that cannot see the
champion must not crown whatever comes next. The gate does not sample the champion itself (that
needs the model, the datasets and minutes of compute); the nightly flow scores both in one run and
passes the champion's scores in.

A challenger's metrics that are not rates (1.7, True, "0.5", None) are a scorer's bug and raise
`GateError` before anything is recorded; a NaN stands for "not measured" and holds the challenger back.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

from chemgen import tracking
from chemgen.errors import ChemgenError

# Higher is better for every gate metric; the first is the primary one.
GATES: dict[str, tuple[str, ...]] = {
    "chemgen-adit": ("molecule/edm/validity", "molecule/edm/atom_stability", "crystal/cdvae/valid"),
    # Not EDM validity: it keeps a molecule's largest fragment, so an untrained GFMDiff's scattered atoms score
    # 48 % "valid" (as one-atom fragments, 35 % unique); atom stability rises with quality from the start.
    "chemgen-gfmdiff": ("molecule/edm/atom_stability", "molecule/edm/molecule_stability", "molecule/edm/valid_and_unique"),
    # The elucidation benchmark (IR + Raman queries of held-out test molecules, chemgen.elucidation.benchmark).
    # Valid candidates first: they rise from the start of training, while top-k accuracy stays at 0 until the
    # model is far along; top-10 and top-1 must not get worse. The sample count is the number of queries,
    # which is conservative for the valid fraction (measured on queries x candidates samples).
    "chemgen-diffspectra": ("elucidation/valid_samples", "elucidation/top10_accuracy", "elucidation/top1_accuracy"),
}
ALPHA = 0.05                                   # one-sided
TAG_PREFIX = "gate.metric."
SAMPLES_TAG = "gate.samples"
CONTEXT_TAG = "gate.context"
DECISION_TAG = "gate.decision"
KEEP = "the champion is kept"


class GateError(ChemgenError, ValueError):
    """A gate metric that is not a rate in [0, 1], a sample count that is not a positive whole number, an
    unreadable gate tag, or a model without a gate."""


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
    raise GateError(f"no promotion gate defined for model {name!r} (known: {', '.join(GATES)})")


def rate(metric: str, value: Any, whose: str = "challenger") -> float:
    """``value`` as a rate in [0, 1], or NaN for "not measured"; anything else raises `GateError`."""
    # bool is an int to Python, but True is no rate: a scorer that returns one has a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GateError(f"{whose}'s gate metric {metric} = {value!r} is not a number")
    value = float(value)
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise GateError(f"{whose}'s gate metric {metric} = {value!r} lies outside [0, 1] (gate metrics are rates)")
    return value


def sample_count(value: Any, whose: str = "challenger") -> int | None:
    """A positive whole number of samples, or None when not recorded; anything else raises `GateError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise GateError(f"{whose}'s sample count {value!r} is not a positive whole number")
    return int(value)


def two_proportion_z(p_new: float, n_new: int, p_old: float, n_old: int) -> float:
    """Pooled two-proportion z statistic of p_new - p_old (positive: the new rate is higher)."""
    pooled = (p_new * n_new + p_old * n_old) / (n_new + n_old)
    variance = pooled * (1 - pooled) * (1 / n_new + 1 / n_old)
    if variance <= 0:
        # Both rates at the same end of [0, 1]: equal, or apart by a rounding residue (1.0 vs 1 - 1e-16
        # pools to exactly 1.0). Neither is evidence of a difference.
        return 0.0
    return (p_new - p_old) / math.sqrt(variance)


def decide(gate: tuple[str, ...], challenger: Evaluation, champion: Evaluation | None,
           alpha: float = ALPHA) -> GateDecision:
    """Whether ``challenger`` replaces ``champion`` (None: there is none yet); see the module docstring.

    Raises `GateError` when the challenger's gate metrics or sample count are not what the gate compares;
    the champion's are never a reason to promote: when they are missing or invalid the challenger is held."""
    if not 0 < alpha < 0.5:
        raise GateError(f"alpha = {alpha!r}: a one-sided level in (0, 0.5)")
    ours = {m: rate(m, challenger.metrics.get(m, math.nan)) for m in gate}
    n_ours = sample_count(challenger.samples)
    missing = [m for m in gate if math.isnan(ours[m])]
    if missing:
        return GateDecision(False, f"challenger lacks gate metric(s) {missing}", ours, None)
    if champion is None:
        return GateDecision(True, "first version: no champion yet", ours, None)
    try:
        theirs = {m: rate(m, champion.metrics.get(m, math.nan), "champion") for m in gate}
        n_theirs = sample_count(champion.samples, "champion")
    except GateError as err:
        return GateDecision(False, f"not comparable: {err}; {KEEP}", ours, None)
    lacking = [m for m in gate if math.isnan(theirs[m])]
    if len(lacking) == len(gate):
        return GateDecision(False, "not comparable: the champion has no gate metrics (promoted by hand, registered "
                                   f"outside the gate, or shipped without scores); {KEEP}. Score both in one run (the "
                                   "nightly flow does) or promote by hand", ours, theirs)
    if challenger.context != champion.context:
        differ = sorted(k for k in set(challenger.context) | set(champion.context)
                        if challenger.context.get(k) != champion.context.get(k))
        return GateDecision(False, f"not comparable: evaluated in another context than the champion "
                                   f"({', '.join(differ)}); {KEEP}. Promote by hand if wanted", ours, theirs)
    if lacking:
        return GateDecision(False, f"not comparable: the champion lacks gate metric(s) {lacking}; {KEEP}", ours, theirs)
    if n_ours is None or n_theirs is None:
        return GateDecision(False, f"not comparable: sample counts missing; {KEEP}", ours, theirs)
    bound = NormalDist().inv_cdf(1 - alpha)
    z = {m: two_proportion_z(ours[m], n_ours, theirs[m], n_theirs) for m in gate}
    worse = [m for m in gate if z[m] < -bound]
    if worse:
        return GateDecision(False, "worse than the champion beyond the 95 % bound on " + ", ".join(
            f"{m} ({ours[m]:.4f} < {theirs[m]:.4f}, z = {z[m]:.2f})" for m in worse), ours, theirs, z)
    primary = gate[0]
    if not z[primary] > bound:
        return GateDecision(False, f"{primary} not better beyond the one-sided 95 % bound "
                                   f"({ours[primary]:.4f} vs {theirs[primary]:.4f}, z = {z[primary]:.2f} <= "
                                   f"{bound:.2f})", ours, theirs, z)
    return GateDecision(True, f"beats the champion on {primary} ({ours[primary]:.4f} vs {theirs[primary]:.4f}, "
                              f"z = {z[primary]:.2f}) and is not worse on the others", ours, theirs, z)


def record(name: str, version: str | int, evaluation: Evaluation) -> None:
    """Store a version's gate metrics, sample count and context as tags (validated first: no bad tag is ever set)."""
    gate = gate_metrics_for(name)
    metrics = {m: rate(m, evaluation.metrics[m]) for m in gate if m in evaluation.metrics}
    samples = sample_count(evaluation.samples)
    client = tracking.client()
    for metric, value in metrics.items():
        client.set_model_version_tag(name, str(version), TAG_PREFIX + metric, repr(value))
    if samples:
        client.set_model_version_tag(name, str(version), SAMPLES_TAG, str(samples))
    client.set_model_version_tag(name, str(version), CONTEXT_TAG, json.dumps(evaluation.context, sort_keys=True))


def recorded(name: str, version: str | int) -> dict[str, float]:
    """The gate metrics recorded on a version; a tag that is not a number raises `GateError` naming it."""
    return recorded_in_tags(name, version, tracking.model_version(name, version).tags)


def recorded_in_tags(name: str, version: str | int, tags: dict[str, str]) -> dict[str, float]:
    """The gate metrics in a version's tags (already fetched); `GateError` names a tag that is not a number."""
    metrics = {}
    for key, text in tags.items():
        if key.startswith(TAG_PREFIX):
            try:
                metrics[key[len(TAG_PREFIX):]] = float(text)
            except ValueError:
                raise GateError(f"{name} version {version}: tag {key} = {text!r} is not a number") from None
    return metrics


def recorded_evaluation(name: str, version: str | int) -> Evaluation:
    """A version's evaluation from its tags; unreadable tags raise `GateError` naming the tag and its value."""
    tags = tracking.model_version(name, version).tags
    samples = tags.get(SAMPLES_TAG)
    try:
        samples = int(samples) if samples is not None else None
        context = json.loads(tags[CONTEXT_TAG]) if CONTEXT_TAG in tags else {}
    except ValueError:  # json.JSONDecodeError is a ValueError
        raise GateError(f"{name} version {version}: unreadable gate tags ({SAMPLES_TAG} = {tags.get(SAMPLES_TAG)!r}, "
                        f"{CONTEXT_TAG} = {tags.get(CONTEXT_TAG)!r})") from None
    if not isinstance(context, dict):
        raise GateError(f"{name} version {version}: tag {CONTEXT_TAG} = {tags[CONTEXT_TAG]!r} is not a JSON object")
    return Evaluation(recorded_in_tags(name, version, tags), samples, context)


def evaluate_and_promote(name: str, version: str | int, evaluation: Evaluation,
                         champion_evaluation: Evaluation | None = None,
                         champion_version: str | int | None = None) -> GateDecision:
    """Record the challenger's evaluation, compare with the champion's, move ``champion`` if it wins.

    ``champion_evaluation`` is the champion scored in the same run (same seeds), and ``champion_version`` the
    version that was scored: if the alias has moved since, the scores belong to another model and nothing is
    promoted. Without ``champion_evaluation``, the scores recorded on the champion's version are used (and
    compared only if their context is the same); a champion without them is never beaten by default.
    Invalid challenger metrics raise `GateError` before anything is recorded."""
    gate = gate_metrics_for(name)
    alone = decide(gate, evaluation, None)  # validates the challenger's numbers before any tag is written
    record(name, version, evaluation)
    champion = tracking.version_by_alias(name, tracking.CHAMPION)
    decision = alone
    if champion is not None and alone.promote:
        decision = _against_champion(name, gate, evaluation, alone, str(champion.version), champion_evaluation,
                                     champion_version)
        decision = replace(decision, reason=f"{decision.reason} (champion: version {champion.version}"
                                            + ("" if decision.promote else "; this version stays a challenger") + ")")
    if decision.promote and not tracking.promote(name, version,
                                                  expected=None if champion is None else str(champion.version)):
        decision = replace(decision, promote=False, reason=f"{decision.reason}; not promoted: the champion moved "
                                                           f"while this run decided (another run promoted); {KEEP}")
    tracking.client().set_model_version_tag(name, str(version), DECISION_TAG,
                                            ("promoted: " if decision.promote else "held: ") + decision.reason)
    return decision


def _against_champion(name: str, gate: tuple[str, ...], evaluation: Evaluation, alone: GateDecision, current: str,
                      champion_evaluation: Evaluation | None, champion_version: str | int | None) -> GateDecision:
    """The decision against the current champion (version ``current``), or why there can be none."""
    if champion_evaluation is None:
        try:
            champion_evaluation = recorded_evaluation(name, current)
        except GateError as err:
            return replace(alone, promote=False, reason=f"not comparable: {err}; {KEEP}")
    elif champion_version is not None and str(champion_version) != current:
        return replace(alone, promote=False, reason=f"not comparable: the champion moved from version "
                                                    f"{champion_version} (the one scored) to {current} during this "
                                                    f"run; {KEEP}")
    return decide(gate, evaluation, champion_evaluation)

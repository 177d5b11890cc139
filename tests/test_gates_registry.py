"""The gate and the registry commands on a real local MLflow registry (SQLite under the session's CHEMGEN_HOME).

Versions are registered without a model behind them (a bare source path): the gate reads only aliases and tags.
"""

from __future__ import annotations

import math
import re
import uuid

import pytest
from typer.testing import CliRunner

from chemgen import gates, tracking
from chemgen.cli.app import app
from chemgen.gates import Evaluation, GateError

runner = CliRunner()
CONTEXT = {"profile": "test", "samples": "200", "scoring": "1"}
GOOD = {"molecule/edm/validity": 0.5, "molecule/edm/atom_stability": 0.5, "crystal/cdvae/valid": 0.5}
BAD = {"molecule/edm/validity": 0.02, "molecule/edm/atom_stability": 0.10, "crystal/cdvae/valid": 0.01}


@pytest.fixture()
def model() -> str:
    """A fresh registered model under the gated name ``chemgen-adit-*``, with no versions yet."""
    name = f"chemgen-adit-test-{uuid.uuid4().hex[:8]}"
    tracking.client().create_registered_model(name)
    return name


def new_version(name: str, tmp_path) -> str:
    source = tmp_path / uuid.uuid4().hex
    source.mkdir()
    version = tracking.client().create_model_version(name, source=str(source)).version
    tracking.set_alias(name, tracking.CHALLENGER, version)
    return str(version)


def champion(name: str) -> str:
    return str(tracking.version_by_alias(name, tracking.CHAMPION).version)


def test_a_hand_promoted_champion_without_gate_metrics_is_not_beaten_by_anything(model, tmp_path):
    first = new_version(model, tmp_path)
    promoted = runner.invoke(app, ["registry", "promote", model, first])
    assert promoted.exit_code == 0 and "is now champion" in promoted.output
    assert "no gate metrics" in promoted.output  # the hand promotion says what the gate will do
    poor = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, poor, Evaluation(BAD, 200, CONTEXT))
    assert not decision.promote and champion(model) == first
    assert "not comparable: the champion has no gate metrics" in decision.reason
    assert f"champion: version {first}" in decision.reason
    tags = tracking.client().get_model_version(model, poor).tags
    assert tags[gates.DECISION_TAG].startswith("held: not comparable")
    assert str(tracking.version_by_alias(model, tracking.CHALLENGER).version) == poor  # registered, alias challenger
    assert gates.recorded(model, poor) == BAD  # its own scores are kept for later comparisons


def test_a_champion_scored_in_the_same_run_is_compared(model, tmp_path):
    first = new_version(model, tmp_path)
    tracking.promote(model, first)
    better = {k: 0.9 for k in GOOD}
    second = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, second, Evaluation(better, 200, CONTEXT),
                                          champion_evaluation=Evaluation(GOOD, 200, CONTEXT), champion_version=first)
    assert decision.promote and champion(model) == second and "beats the champion" in decision.reason
    assert tracking.client().get_model_version(model, second).tags["previous_champion"] == first


def test_scores_of_a_champion_that_moved_during_the_run_are_not_used(model, tmp_path):
    first, other = new_version(model, tmp_path), new_version(model, tmp_path)
    tracking.promote(model, other)  # someone promoted by hand while the run scored version `first`
    challenger = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, challenger, Evaluation({k: 0.9 for k in GOOD}, 200, CONTEXT),
                                          champion_evaluation=Evaluation(GOOD, 200, CONTEXT), champion_version=first)
    assert not decision.promote and champion(model) == other
    assert f"the champion moved from version {first}" in decision.reason


def test_the_champion_moves_only_from_where_the_promoter_found_it(model, tmp_path):
    first, second, third = (new_version(model, tmp_path) for _ in range(3))
    assert tracking.promote(model, first, expected=None)
    assert tracking.promote(model, second, expected=first) and champion(model) == second
    assert not tracking.promote(model, third, expected=first) and champion(model) == second   # it moved: refused
    assert not tracking.promote(model, third, expected=None)


def test_two_runs_beating_the_same_champion_at_once_promote_once(model, tmp_path, monkeypatch):
    """Both runs read the champion before either promotes (held at a barrier): one moves the alias, the other
    finds it moved and keeps its version a challenger."""
    import threading

    first = new_version(model, tmp_path)
    tracking.promote(model, first)
    challengers = [new_version(model, tmp_path), new_version(model, tmp_path)]
    barrier = threading.Barrier(2, timeout=60)
    compare = gates._against_champion

    def both_read_first(*args, **kwargs):
        barrier.wait()
        return compare(*args, **kwargs)

    monkeypatch.setattr(gates, "_against_champion", both_read_first)
    decisions = {}

    def run(version: str) -> None:
        decisions[version] = gates.evaluate_and_promote(
            model, version, Evaluation({k: 0.9 for k in GOOD}, 200, CONTEXT),
            champion_evaluation=Evaluation(GOOD, 200, CONTEXT), champion_version=first)

    threads = [threading.Thread(target=run, args=(v,)) for v in challengers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    promoted = [v for v, d in decisions.items() if d.promote]
    assert len(decisions) == 2 and len(promoted) == 1 and champion(model) == promoted[0]
    held = next(d for v, d in decisions.items() if v != promoted[0])
    assert "the champion moved" in held.reason
    tags = tracking.client().get_model_version(model, promoted[0]).tags
    assert tags["previous_champion"] == first


def test_recorded_champion_scores_in_another_context_or_with_nan_hold_the_challenger(model, tmp_path):
    first = new_version(model, tmp_path)
    gates.evaluate_and_promote(model, first, Evaluation(GOOD, 200, {**CONTEXT, "scoring": "0"}))
    assert champion(model) == first  # the first version: no champion yet
    second = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, second, Evaluation({k: 0.95 for k in GOOD}, 200, CONTEXT))
    assert not decision.promote and "another context" in decision.reason and "scoring" in decision.reason
    third = new_version(model, tmp_path)
    gates.record(model, third, Evaluation({**GOOD, "crystal/cdvae/valid": math.nan}, 200, CONTEXT))
    tracking.promote(model, third)
    fourth = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, fourth, Evaluation({k: 0.95 for k in GOOD}, 200, CONTEXT))
    assert not decision.promote and champion(model) == third
    assert "the champion lacks gate metric(s) ['crystal/cdvae/valid']" in decision.reason


@pytest.mark.parametrize("tag, value, problem", [
    ("gate.metric.molecule/edm/validity", "1.7", "molecule/edm/validity = 1.7 lies outside [0, 1]"),
    ("gate.metric.molecule/edm/validity", "abc", "tag gate.metric.molecule/edm/validity = 'abc' is not a number"),
    ("gate.samples", "many", "unreadable gate tags (gate.samples = 'many'"),
    ("gate.context", "{not json", "unreadable gate tags"),
])
def test_a_champion_with_unreadable_or_invalid_tags_is_kept_and_the_reason_names_them(model, tmp_path, tag, value,
                                                                                         problem):
    first = new_version(model, tmp_path)
    gates.record(model, first, Evaluation(GOOD, 200, CONTEXT))
    tracking.promote(model, first)
    tracking.client().set_model_version_tag(model, first, tag, value)
    second = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, second, Evaluation({k: 0.95 for k in GOOD}, 200, CONTEXT))
    assert not decision.promote and champion(model) == first
    assert "not comparable" in decision.reason and problem in decision.reason, decision.reason


@pytest.mark.parametrize("value, problem", [
    (1.7, "= 1.7 lies outside [0, 1]"), (True, "= True is not a number"), ("0.5", "= '0.5' is not a number"),
    (None, "= None is not a number"),
])
def test_invalid_challenger_metrics_raise_before_anything_is_recorded(model, tmp_path, value, problem):
    first = new_version(model, tmp_path)
    gates.evaluate_and_promote(model, first, Evaluation(GOOD, 200, CONTEXT))
    second = new_version(model, tmp_path)
    with pytest.raises(GateError, match=re.escape(f"challenger's gate metric molecule/edm/atom_stability {problem}")):
        gates.evaluate_and_promote(model, second, Evaluation({**GOOD, "molecule/edm/atom_stability": value}, 200,
                                                             CONTEXT))
    assert champion(model) == first
    assert not any(k.startswith("gate.") for k in tracking.client().get_model_version(model, second).tags)


def test_a_tiny_improvement_is_not_better(model, tmp_path):
    first = new_version(model, tmp_path)
    gates.evaluate_and_promote(model, first, Evaluation(GOOD, 200, CONTEXT))
    second = new_version(model, tmp_path)
    decision = gates.evaluate_and_promote(model, second, Evaluation({k: v + 1e-12 for k, v in GOOD.items()}, 200,
                                                                    CONTEXT))
    assert not decision.promote and champion(model) == first and "not better beyond" in decision.reason


def test_a_registry_that_does_not_answer_is_not_read_as_no_champion(monkeypatch):
    """None means "no champion yet", on which the gate promotes; a server error must not look like that."""
    from mlflow.exceptions import MlflowException

    class Down:
        def get_model_version_by_alias(self, name, alias):
            raise MlflowException("connection refused", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(tracking, "client", lambda: Down())
    with pytest.raises(MlflowException, match="connection refused"):
        tracking.version_by_alias("chemgen-adit", tracking.CHAMPION)


# ---------------------------------------------------------------------------- the registry commands
def test_registry_commands_name_unknown_models_and_versions_in_one_line(model, tmp_path):
    first = new_version(model, tmp_path)
    for args, message in (
        (["registry", "promote", "no-such-model", "1"], "error: no registered model 'no-such-model' (registered:"),
        (["registry", "promote", model, "9"], f"error: {model} has no version '9' (versions: {first})"),
        (["registry", "promote", model, "latest"], f"error: {model} has no version 'latest'"),
        (["registry", "show", model, "--version", "9"], f"error: {model} has no version '9'"),
        (["registry", "show", model], f"error: {model} has no champion yet"),
        (["registry", "rollback", model], f"error: {model} has no champion to roll back"),
        (["registry", "rollback", "no-such-model"], "error: no registered model 'no-such-model'"),
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "400"})
        assert result.exit_code == 1 and result.output.startswith(message), (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert tracking.version_by_alias(model, tracking.CHAMPION) is None
    tracking.promote(model, first)
    rollback = runner.invoke(app, ["registry", "rollback", model], env={"COLUMNS": "400"})
    assert rollback.exit_code == 1 and f"version {first} replaced no earlier champion" in rollback.output


def test_registry_show_names_a_corrupt_gate_tag(model, tmp_path):
    first = new_version(model, tmp_path)
    tracking.client().set_model_version_tag(model, first, "gate.metric.molecule/edm/validity", "abc")
    result = runner.invoke(app, ["registry", "show", model, "--version", first], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and "gate.metric.molecule/edm/validity = 'abc' is not a number" in result.output

"""The real Prefect flows (not `.fn`) on an ephemeral Prefect API and a temporary MLflow store."""

from __future__ import annotations

import pytest

from chemgen import gates, tracking
from workflows.curate import curate_all
from workflows.retrain import nightly_retrain

MODEL = "chemgen-adit-flowtest"
# from scratch with the tiny config: what the flow does, not how good a model gets
SMALL = {"config": "tiny", "init": None, "minutes": None, "qm9_rows": 600, "steps": {"vae": 150, "dit": 150},
         "samples": 40, "sample_steps": 10}


def versions(name: str) -> list[str]:
    return sorted((str(v.version) for v in tracking.client().search_model_versions(f"name='{name}'")), key=int)


@pytest.fixture(scope="module")
def first_run(mp20_slice_dir):
    return nightly_retrain(profile="demo", model_name=MODEL, data_dir=str(mp20_slice_dir), overrides=SMALL)


def test_first_run_registers_a_champion(first_run):
    reg = first_run["registration"]
    assert reg["promoted"] and "first version" in reg["reason"]
    champion = tracking.version_by_alias(MODEL, tracking.CHAMPION)
    assert champion is not None and str(champion.version) == str(reg["version"])
    assert set(gates.recorded(MODEL, champion.version)) == set(gates.gate_metrics_for(MODEL))
    evaluation = gates.recorded_evaluation(MODEL, champion.version)
    assert evaluation.samples == SMALL["samples"] and evaluation.context["profile"] == "demo"
    assert evaluation.context["datasets"].startswith("qm9@")
    run = tracking.client().get_run(first_run["mlflow_run_id"])
    assert run.data.tags["prefect.flow_run_id"]
    assert "molecule/edm/validity" in run.data.metrics and "crystal/cdvae/valid" in run.data.metrics


def test_demo_runs_never_register_under_the_production_name():
    from workflows.retrain import registered_name

    assert registered_name("nightly") == "chemgen-adit" and registered_name("demo") == "chemgen-adit-demo"


def test_a_worse_run_stays_challenger(first_run, mp20_slice_dir):
    before = tracking.version_by_alias(MODEL, tracking.CHAMPION).version
    worse = nightly_retrain(profile="demo", model_name=MODEL, data_dir=str(mp20_slice_dir),
                            overrides={**SMALL, "steps": {"vae": 1, "dit": 1}})
    reg = worse["registration"]
    assert not reg["promoted"], reg
    assert tracking.version_by_alias(MODEL, tracking.CHAMPION).version == before
    assert str(tracking.version_by_alias(MODEL, tracking.CHALLENGER).version) == str(reg["version"])
    assert worse["datasets"][0]["reused"]  # unchanged input: curation was a no-op
    # the champion was sampled from the same seeds in the same run, and that is what the gate compared
    assert worse["champion_metrics"] and reg["champion_before"] == {
        m: worse["champion_metrics"][m] for m in gates.gate_metrics_for(MODEL)}


def test_the_shipped_model_is_the_first_champion_and_a_fine_tuned_challenger_faces_it(mp20_slice_dir):
    """The demo profile's path: no champion yet, so the shipped checkpoint is registered as champion; a challenger
    fine-tuned from it is scored beside it on the same seeds and the gate decides."""
    name = "chemgen-adit-shippedtest"
    result = nightly_retrain(profile="demo", model_name=name, data_dir=str(mp20_slice_dir),
                             overrides={"qm9_rows": 600, "minutes": None, "steps": {"dit": 2}, "samples": 8,
                                        "sample_steps": 3})
    shipped = tracking.client().get_model_version(name, result["champion"]["version"])
    assert shipped.tags.get("shipped") == "true" and str(result["champion"]["version"]) == "1"
    reg = result["registration"]
    assert str(reg["version"]) == "2" and reg["champion_before"] is not None
    assert set(result["champion_metrics"]) == set(result["metrics"])
    from chemgen.generation import lineage

    trained = lineage.read_manifest(result["train"]["model_dir"])
    shipped_steps = lineage.read_manifest(result["champion"]["model_dir"])["steps"]
    assert trained["steps"] == {"vae": shipped_steps["vae"], "dit": shipped_steps["dit"] + 2}


def test_an_injected_failure_is_retried_then_fails_cleanly(first_run, mp20_slice_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    registry_before = versions(MODEL)
    champion_before = tracking.version_by_alias(MODEL, tracking.CHAMPION).version
    state = nightly_retrain(profile="demo", model_name=MODEL, data_dir=str(mp20_slice_dir),
                            overrides={**SMALL, "steps": {"vae": 5, "dit": 5}}, fail_at="sample-crystal",
                            return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    failed = [t for t in task_runs if t.name.startswith("sample-and-score") and t.state.is_failed()]
    assert failed and failed[0].run_count == 2  # one retry, then the failure stands
    assert versions(MODEL) == registry_before
    assert tracking.version_by_alias(MODEL, tracking.CHAMPION).version == champion_before


def test_curate_flow_is_a_no_op_on_unchanged_input(first_run, mp20_slice_dir):
    first = curate_all(datasets=["mp20"], data_dir=str(mp20_slice_dir))
    again = curate_all(datasets=["mp20"], data_dir=str(mp20_slice_dir))
    assert again[0]["reused"] and again[0]["version"] == first[0]["version"]
    assert again[0]["splits"]["test"] == 40
    with pytest.raises(ValueError, match="unknown dataset"):
        curate_all.fn(datasets=["qm10"])


def test_rollback_returns_champion_to_the_previous_version(first_run):
    first = tracking.version_by_alias(MODEL, tracking.CHAMPION).version
    latest = versions(MODEL)[-1]
    tracking.promote(MODEL, latest)
    assert str(tracking.rollback(MODEL)) == str(first)
    assert str(tracking.version_by_alias(MODEL, tracking.CHAMPION).version) == str(first)


def test_registry_commands(first_run):
    from typer.testing import CliRunner

    from chemgen.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["registry", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and MODEL in listed.output and "champion" in listed.output
    shown = runner.invoke(app, ["registry", "show", MODEL])
    assert shown.exit_code == 0 and "gate molecule/edm/validity" in shown.output
    missing = runner.invoke(app, ["registry", "show", "no-such-model"])
    assert missing.exit_code == 1


def test_deployments_and_prefect_yaml_point_at_the_flows():
    import importlib
    from pathlib import Path

    import yaml

    from workflows.deploy import DEPLOYMENTS, NIGHTLY_CRON, check_parameters, deployments

    built = deployments()
    assert sorted((d.flow_name, d.name) for d in built) == [
        ("crystal-screening", "on-demand"), ("curate", "on-demand"), ("curate-spectra", "on-demand"),
        ("nightly-retrain", "nightly")]
    nightly = next(d for d in built if d.name == "nightly")
    assert nightly.schedules[0].schedule.cron == NIGHTLY_CRON and nightly.parameters == {"profile": "nightly"}
    assert deployments(profile="demo")[0].parameters == {"profile": "demo"}
    assert check_parameters() == []
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    served = {(d.entrypoint, d.name): d for d in DEPLOYMENTS}
    for deployment in spec["deployments"]:
        module_path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, function), "to_deployment"), deployment["entrypoint"]
        # every prefect.yaml entry is a served deployment (or its -k8s twin) with the same parameters and tags
        source = served[deployment["entrypoint"], deployment["name"].removesuffix("-k8s")]
        assert deployment.get("parameters", {}) == source.parameters and deployment["tags"] == list(source.tags)
    assert len(spec["deployments"]) == len(DEPLOYMENTS) + sum(d.kubernetes for d in DEPLOYMENTS)


def test_the_committed_prefect_yaml_is_the_generated_one():
    """prefect.yaml is generated from workflows/deploy.py; editing one without the other fails here."""
    from pathlib import Path

    from workflows.deploy import main, render_prefect_yaml

    committed = Path(__file__).resolve().parents[2] / "prefect.yaml"
    assert committed.read_text() == render_prefect_yaml(), "prefect.yaml is out of date: run `make prefect-yaml`"
    assert main(["--check-prefect-yaml", str(committed)]) == 0


def test_a_drifted_prefect_yaml_is_caught(tmp_path, capsys):
    from pathlib import Path

    from workflows.deploy import main

    drifted = tmp_path / "prefect.yaml"
    drifted.write_text((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text().replace("n: 1000", "n: 20"))
    assert main(["--check-prefect-yaml", str(drifted)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--write-prefect-yaml", str(drifted)]) == 0
    assert main(["--check-prefect-yaml", str(drifted)]) == 0

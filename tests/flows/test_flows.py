"""The real Prefect flows (not `.fn`) on an ephemeral Prefect API and a temporary MLflow store."""

from __future__ import annotations

import pytest

from chemgen import gates, tracking
from chemgen.flows.curate import curate_all
from chemgen.flows.retrain import BranchFailed, nightly_retrain

MODEL = "chemgen-adit-flowtest"
ROWS = {"qm9_rows": 600}
# from scratch with the tiny config: what the flow does, not how good a model gets
SMALL = {"config": "tiny", "init": None, "minutes": None, "steps": {"vae": 150, "dit": 150}, "samples": 40,
         "sample_steps": 10}
# both branches in one flow, as fast as they go: ADiT from scratch, GFMDiff continuing its (tiny) shipped lineage
QUICK_ADIT = {**SMALL, "steps": {"vae": 5, "dit": 5}, "samples": 8, "sample_steps": 3}
QUICK_GFMDIFF = {"config": "tiny", "minutes": None, "steps": {"denoiser": 2}, "samples": 8, "sample_steps": 4}


def versions(name: str) -> list[str]:
    return sorted((str(v.version) for v in tracking.client().search_model_versions(f"name='{name}'")), key=int)


def retrain_adit(name: str, plan: dict, **kwargs):
    """The flow with ADiT's branch only."""
    return nightly_retrain(profile="demo", models=["adit"], model_names={"adit": name},
                           overrides={**ROWS, "adit": plan}, **kwargs)


@pytest.fixture(scope="module")
def first_run(mp20_slice_dir):
    return retrain_adit(MODEL, SMALL, data_dir=str(mp20_slice_dir))


@pytest.fixture(scope="module")
def gfmdiff_weights(first_run, tmp_path_factory):
    """A shipped-weights folder whose ``gfmdiff-cpu/`` is a tiny GFMDiff lineage (4 steps) on the flow's QM9 slice."""
    import shutil

    from chemgen.datasets import curation_recipe
    from chemgen.data.store import curate
    from chemgen.training.tracked import train

    qm9 = curate(curation_recipe("qm9", limit=ROWS["qm9_rows"]), progress=False)
    root = tmp_path_factory.mktemp("weights")
    outcome = train("gfmdiff", "tiny", root / "run", steps={"denoiser": 4}, tokens_per_batch=128,
                    versions={"qm9": qm9.version}, progress=False, device="cpu")
    shutil.copytree(outcome.model_dir, root / "gfmdiff-cpu")
    return root


def test_first_run_registers_a_champion(first_run):
    branch = first_run["branches"]["adit"]
    reg = branch["registration"]
    assert branch["status"] == "registered" and not first_run["failed"]
    assert reg["promoted"] and "first version" in reg["reason"]
    champion = tracking.version_by_alias(MODEL, tracking.CHAMPION)
    assert champion is not None and str(champion.version) == str(reg["version"])
    assert set(gates.recorded(MODEL, champion.version)) == set(gates.gate_metrics_for(MODEL))
    evaluation = gates.recorded_evaluation(MODEL, champion.version)
    assert evaluation.samples == SMALL["samples"] and evaluation.context["profile"] == "demo"
    assert evaluation.context["datasets"].startswith("qm9@")
    flow_run = tracking.client().get_run(first_run["mlflow_run_id"])
    assert flow_run.data.tags["prefect.flow_run_id"]
    run = tracking.client().get_run(branch["mlflow_run_id"])   # the branch: a child of the flow's run
    assert run.data.tags["mlflow.parentRunId"] == first_run["mlflow_run_id"] and run.data.tags["model"] == "adit"
    assert "molecule/edm/validity" in run.data.metrics and "crystal/cdvae/valid" in run.data.metrics


def test_demo_runs_never_register_under_the_production_name():
    from chemgen.flows.retrain import registered_name

    assert registered_name("nightly") == "chemgen-adit" and registered_name("demo") == "chemgen-adit-demo"
    assert registered_name("nightly", "gfmdiff") == "chemgen-gfmdiff"
    assert registered_name("demo", "gfmdiff") == "chemgen-gfmdiff-demo"


def test_a_worse_run_stays_challenger(first_run, mp20_slice_dir):
    before = tracking.version_by_alias(MODEL, tracking.CHAMPION).version
    worse = retrain_adit(MODEL, {**SMALL, "steps": {"vae": 1, "dit": 1}}, data_dir=str(mp20_slice_dir))
    branch = worse["branches"]["adit"]
    reg = branch["registration"]
    assert not reg["promoted"], reg
    assert tracking.version_by_alias(MODEL, tracking.CHAMPION).version == before
    assert str(tracking.version_by_alias(MODEL, tracking.CHALLENGER).version) == str(reg["version"])
    assert worse["datasets"][0]["reused"]  # unchanged input: curation was a no-op
    # the champion was sampled from the same seeds in the same run, and that is what the gate compared
    assert branch["champion_metrics"] and reg["champion_before"] == {
        m: branch["champion_metrics"][m] for m in gates.gate_metrics_for(MODEL)}


def test_the_shipped_model_is_the_first_champion_and_a_fine_tuned_challenger_faces_it(mp20_slice_dir):
    """The demo profile's path: no champion yet, so the shipped checkpoint is registered as champion; a challenger
    fine-tuned from it is scored beside it on the same seeds and the gate decides."""
    name = "chemgen-adit-shippedtest"
    result = retrain_adit(name, {"minutes": None, "steps": {"dit": 2}, "samples": 8, "sample_steps": 3},
                          data_dir=str(mp20_slice_dir))
    branch = result["branches"]["adit"]
    shipped = tracking.client().get_model_version(name, branch["champion"]["version"])
    assert shipped.tags.get("shipped") == "true" and str(branch["champion"]["version"]) == "1"
    reg = branch["registration"]
    assert str(reg["version"]) == "2" and reg["champion_before"] is not None
    assert set(branch["champion_metrics"]) == set(branch["metrics"])
    from chemgen import lineage

    trained = lineage.read_manifest(branch["train"]["model_dir"])
    shipped_steps = lineage.read_manifest(branch["champion"]["model_dir"])["steps"]
    assert trained["steps"] == {"vae": shipped_steps["vae"], "dit": shipped_steps["dit"] + 2}


def flow_task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_an_injected_failure_is_retried_then_fails_cleanly(first_run, mp20_slice_dir):
    registry_before = versions(MODEL)
    champion_before = tracking.version_by_alias(MODEL, tracking.CHAMPION).version
    state = retrain_adit(MODEL, {**SMALL, "steps": {"vae": 5, "dit": 5}}, data_dir=str(mp20_slice_dir),
                         fail_at="sample-crystal", return_state=True)
    assert state.is_failed() and "adit in task 'sample-and-score'" in state.message
    failed = [t for t in flow_task_runs(state.state_details.flow_run_id)
              if t.name.startswith("sample-and-score") and t.state.is_failed()]
    assert failed and failed[0].run_count == 2  # one retry, then the failure stands
    assert versions(MODEL) == registry_before
    assert tracking.version_by_alias(MODEL, tracking.CHAMPION).version == champion_before


def test_one_flow_registers_and_gates_each_model_under_its_own_name(gfmdiff_weights, mp20_slice_dir, monkeypatch):
    """Both branches in one flow run: data curated once; ADiT and GFMDiff each register their own version under
    their own name and pass their own gate (GFMDiff's challenger continues its shipped lineage, its champion)."""
    from chemgen import lineage

    monkeypatch.setattr(lineage, "SHIPPED_ROOT", gfmdiff_weights)
    names = {"adit": "chemgen-adit-both", "gfmdiff": "chemgen-gfmdiff-both"}
    state = nightly_retrain(profile="demo", models=list(names), model_names=names, data_dir=str(mp20_slice_dir),
                            return_state=True, overrides={**ROWS, "adit": QUICK_ADIT, "gfmdiff": QUICK_GFMDIFF})
    assert state.is_completed(), state.message
    result = state.result()
    assert [d["name"] for d in result["datasets"]] == ["qm9", "mp20"] and not result["failed"]
    curations = [t for t in flow_task_runs(state.state_details.flow_run_id) if t.name.startswith("curate-dataset")]
    assert len(curations) == 2   # once for both branches
    adit, gfmdiff = result["branches"]["adit"], result["branches"]["gfmdiff"]
    assert adit["status"] == gfmdiff["status"] == "registered"
    assert adit["registration"]["name"] == names["adit"] and adit["registration"]["promoted"]
    assert gfmdiff["registration"]["name"] == names["gfmdiff"] and str(gfmdiff["registration"]["version"]) == "2"
    shipped = tracking.client().get_model_version(names["gfmdiff"], gfmdiff["champion"]["version"])
    assert shipped.tags.get("shipped") == "true" and str(shipped.version) == "1"
    assert lineage.read_manifest(gfmdiff["train"]["model_dir"])["steps"] == {"denoiser": 4 + 2}
    assert set(gfmdiff["metrics"]) == set(gfmdiff["champion_metrics"])
    assert all(k.startswith("molecule/") for k in gfmdiff["metrics"])          # QM9 only
    assert gfmdiff["registration"]["champion_before"] is not None              # the gate compared the two
    for model, name in names.items():
        version = gfmdiff["registration"]["version"] if model == "gfmdiff" else adit["registration"]["version"]
        assert set(gates.recorded(name, version)) == set(gates.gate_metrics_for(name))
        assert str(tracking.version_by_alias(name, tracking.CHALLENGER).version) == str(version)
    assert gates.gate_metrics_for(names["gfmdiff"]) != gates.gate_metrics_for(names["adit"])


def test_branches_run_side_by_side_in_worker_processes(mp20_slice_dir, tmp_path):
    """The main job's way: each branch a task in its own worker process, both at once, each saying what it does
    in the events file; their MLflow runs still hang under the flow's run."""
    from prefect.task_runners import ProcessPoolTaskRunner

    from chemgen.flows.events import read_events

    names = {"adit": "chemgen-adit-parallel", "gfmdiff": "chemgen-gfmdiff-parallel"}
    scratch = {"adit": QUICK_ADIT, "gfmdiff": {**QUICK_GFMDIFF, "init": None}}   # nothing shipped in the workers
    events = tmp_path / "events.jsonl"
    flow = nightly_retrain.with_options(task_runner=ProcessPoolTaskRunner(max_workers=2))
    result = flow(profile="demo", models=list(names), model_names=names, data_dir=str(mp20_slice_dir),
                  overrides={**ROWS, **scratch}, parallel=True, events=str(events))
    assert not result["failed"]
    branches = result["branches"]
    assert branches["adit"]["status"] == branches["gfmdiff"]["status"] == "registered"
    said, _ = read_events(events)
    for model, name in names.items():
        lines = [e.message for e in said if e.source == model]
        assert lines[0].startswith("training a challenger") and lines[-1].startswith(f"registered {name} version")
        assert str(tracking.version_by_alias(name, tracking.CHAMPION).version) == "1"
        branch_run = tracking.client().get_run(branches[model]["mlflow_run_id"])
        assert branch_run.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
    assert said[0].source == "flow" and said[0].message.startswith("curating")
    # side by side: each branch started before the other finished
    first_start = {m: next(e.time for e in said if e.source == m) for m in names}
    last = {m: [e.time for e in said if e.source == m][-1] for m in names}
    assert first_start["gfmdiff"] < last["adit"] and first_start["adit"] < last["gfmdiff"]


def test_a_failed_branch_does_not_block_the_other(gfmdiff_weights, mp20_slice_dir, monkeypatch):
    """GFMDiff's registration fails: ADiT's branch still registers and gates, GFMDiff's failure is in the result,
    nothing half-registered stays behind, and the flow run ends Failed once both branches have finished."""
    import io

    from rich.console import Console

    from chemgen import lineage
    from chemgen.flows.main_job import print_summary

    monkeypatch.setattr(lineage, "SHIPPED_ROOT", gfmdiff_weights)
    names = {"adit": "chemgen-adit-isolated", "gfmdiff": "chemgen-gfmdiff-isolated"}
    state = nightly_retrain(profile="demo", models=list(names), model_names=names, data_dir=str(mp20_slice_dir),
                            return_state=True, fail_at="gfmdiff:register",
                            overrides={**ROWS, "adit": QUICK_ADIT, "gfmdiff": QUICK_GFMDIFF})
    assert state.is_failed() and state.message.startswith("1 of 2 branches failed: gfmdiff")
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BranchFailed)
    result = error.result
    adit, gfmdiff = result["branches"]["adit"], result["branches"]["gfmdiff"]
    assert adit["status"] == "registered" and adit["registration"]["promoted"]
    assert str(tracking.version_by_alias(names["adit"], tracking.CHAMPION).version) == str(
        adit["registration"]["version"])
    assert gfmdiff["status"] == "failed" and gfmdiff["task"] == "register-and-gate"
    assert gfmdiff["error"].startswith("InjectedFailure")
    assert result["failed"] == [{"model": "gfmdiff", "task": "register-and-gate", "error": gfmdiff["error"]}]
    assert versions(names["gfmdiff"]) == ["1"]   # only the shipped champion it registered first
    assert tracking.client().get_run(result["mlflow_run_id"]).info.status == "FAILED"
    out = io.StringIO()
    print_summary(result, "demo", Console(file=out, width=200))
    assert "FAILED" in out.getvalue() and "register-and-gate" in out.getvalue() and names["adit"] in out.getvalue()


def test_a_model_with_nothing_to_continue_is_skipped_not_trained_from_scratch(first_run, tmp_path, monkeypatch):
    """Before GFMDiff's lineage is committed: no shipped lineage, no champion -> its branch is skipped, with the
    reason, and the flow run does not fail (`make run` keeps working)."""
    from chemgen import lineage

    monkeypatch.setattr(lineage, "SHIPPED_ROOT", tmp_path)
    result = nightly_retrain(profile="demo", models=["gfmdiff"], model_names={"gfmdiff": "chemgen-gfmdiff-none"},
                             overrides={**ROWS, "gfmdiff": QUICK_GFMDIFF})
    branch = result["branches"]["gfmdiff"]
    assert branch["status"] == "skipped" and "no shipped lineage" in branch["reason"] and not result["failed"]
    assert "train" not in branch and versions("chemgen-gfmdiff-none") == []
    assert [d["name"] for d in result["datasets"]] == ["qm9"]   # only what the branches sample is curated
    with pytest.raises(Exception, match="unknown override 'schnet'"):
        nightly_retrain.fn(profile="demo", overrides={"schnet": {}})


def test_diffspectra_branch_trains_benchmarks_registers_and_gates(tmp_path_factory, monkeypatch):
    """DiffSpectra's branch: it curates nothing (it trains on the spectra store), continues its shipped lineage
    (here a tiny one), scores challenger and champion with the elucidation benchmark on the same test queries,
    registers under its own name and gates on the benchmark's metrics."""
    import dataclasses
    import shutil

    from chemgen import lineage
    from chemgen.models.specs import load_config
    from chemgen.training.tracked import train

    config = load_config("tiny", "diffspectra")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, limit_per_dataset=24))
    root = tmp_path_factory.mktemp("weights-diffspectra")
    outcome = train("diffspectra", config, root / "run", steps={"specformer": 2, "denoiser": 2}, tokens_per_batch=128,
                    progress=False, device="cpu")
    shutil.copytree(outcome.model_dir, root / "diffspectra-cpu")
    monkeypatch.setattr(lineage, "SHIPPED_ROOT", root)
    name = "chemgen-diffspectra-flowtest"
    plan = {"config": "tiny", "minutes": None, "steps": {"denoiser": 2}, "samples": 2, "sample_steps": 3,
            "queries": 3, "limit": 24}
    result = nightly_retrain(profile="demo", models=["diffspectra"], model_names={"diffspectra": name},
                             overrides={"diffspectra": plan})
    branch = result["branches"]["diffspectra"]
    assert branch["status"] == "registered", branch.get("error") or branch.get("reason")
    assert result["datasets"] == [] and not result["failed"]
    assert lineage.read_manifest(branch["train"]["model_dir"])["steps"] == {"specformer": 2, "denoiser": 4}
    gate = gates.gate_metrics_for(name)
    assert set(gate) <= set(branch["metrics"]) and set(branch["metrics"]) == set(branch["champion_metrics"])
    assert branch["metrics"]["elucidation/queries"] == 3
    assert all(0.0 <= branch["metrics"][k] <= 1.0 for k in gate)
    registration = branch["registration"]
    assert registration["champion_before"] is not None and set(gates.recorded(name, registration["version"])) == set(gate)


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

    from chemgen.cli.app import app

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

    from chemgen.flows.deploy import DEPLOYMENTS, NIGHTLY_CRON, check_parameters, deployments

    built = deployments()
    assert sorted((d.flow_name, d.name) for d in built) == [
        ("crystal-screening", "on-demand"), ("curate", "on-demand"), ("curate-spectra", "on-demand"),
        ("elucidate", "on-demand"), ("nightly-retrain", "nightly")]
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
    """prefect.yaml is generated from chemgen/flows/deploy.py; editing one without the other fails here."""
    from pathlib import Path

    from chemgen.flows.deploy import main, render_prefect_yaml

    committed = Path(__file__).resolve().parents[2] / "prefect.yaml"
    assert committed.read_text() == render_prefect_yaml(), "prefect.yaml is out of date: run `make prefect-yaml`"
    assert main(["--check-prefect-yaml", str(committed)]) == 0


def test_a_drifted_prefect_yaml_is_caught(tmp_path, capsys):
    from pathlib import Path

    from chemgen.flows.deploy import main

    drifted = tmp_path / "prefect.yaml"
    drifted.write_text((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text().replace("n: 200", "n: 20"))
    assert main(["--check-prefect-yaml", str(drifted)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--write-prefect-yaml", str(drifted)]) == 0
    assert main(["--check-prefect-yaml", str(drifted)]) == 0

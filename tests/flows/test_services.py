"""`chemgen services` against a real PostgreSQL server: the MLflow and Prefect servers on it, a worker, the web app.

The reliability tests (killed workers and registrations, a restarted MLflow server) are marked ``reliability``
and run by ``make test-reliability`` (CI runs both). Needs PostgreSQL on 127.0.0.1:5432 (trust auth) or $CHEMGEN_TEST_DATABASE_URL; without one the tests say so and
skip, except where CHEMGEN_REQUIRE_POSTGRES is set (.ci/run sets it: CI always has PostgreSQL, so they must run). Each run uses databases of its own (a random prefix), dropped at the end, and free ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid

import pytest
from typer.testing import CliRunner

from chemgen.cli.app import app
from chemgen.errors import UsageError
from chemgen.flows import services

DATABASE_URL = os.environ.get("CHEMGEN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
runner = CliRunner()
pytestmark = pytest.mark.slow


def _postgres_answers() -> bool:
    import asyncpg

    async def ping() -> bool:
        connection = await asyncpg.connect(DATABASE_URL, timeout=5)
        await connection.close()
        return True

    try:
        return asyncio.run(ping())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    if not _postgres_answers():
        message = f"no PostgreSQL at {DATABASE_URL}: the services tests need one (set CHEMGEN_TEST_DATABASE_URL)"
        if os.environ.get("CHEMGEN_REQUIRE_POSTGRES"):   # CI, where PostgreSQL always runs: missing is a failure
            pytest.fail(message)
        pytest.skip(message)   # a user's machine without PostgreSQL: the rest of the suite still runs
    home = tmp_path_factory.mktemp("services-home")
    chosen = services.from_options(DATABASE_URL, workers=1, prefix=f"chemgen_test_{uuid.uuid4().hex[:8]}",
                                   state_dir=str(home / "services"),
                                   ports={"mlflow": _free_port(), "prefect": _free_port(), "web": _free_port()})
    yield chosen
    services.down(chosen.state, log=lambda line: None)
    services.drop_databases(chosen)


def _cli(settings, *args: str):
    env = {"CHEMGEN_HOME": str(settings.state.parent), "CHEMGEN_DATABASE_URL": DATABASE_URL}
    return runner.invoke(app, ["services", *args], env=env)


def _count_runs(settings, experiment: str) -> int:
    import asyncpg

    async def count() -> int:
        connection = await asyncpg.connect(settings.database("mlflow"), timeout=5)
        try:
            return await connection.fetchval(
                "SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = $1",
                experiment)
        finally:
            await connection.close()

    return asyncio.run(count())


def test_up_starts_every_service_on_postgresql_and_is_idempotent(settings, monkeypatch):
    lines: list[str] = []
    started = services.up(settings, log=lines.append)
    assert started == ["mlflow", "prefect", "worker-1", "web"], lines
    assert f"created database {settings.prefix}_mlflow" in lines and f"created work pool {services.POOL} (process)" in lines
    assert all(s.healthy for s in services.status(settings))
    # status and env read what up recorded (state under $CHEMGEN_HOME/services)
    reply = _cli(settings, "status")
    assert reply.exit_code == 0, reply.output
    env = _cli(settings, "env").output.splitlines()
    assert env == [f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{settings.ports['mlflow']}",
                   f"export PREFECT_API_URL=http://127.0.0.1:{settings.ports['prefect']}/api",
                   f"export CHEMGEN_WEB_URL=http://127.0.0.1:{settings.ports['web']}"]
    # a run tracked through the server lands in PostgreSQL, its artifact in the folder the server serves
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.url("mlflow"))
    mlflow.set_tracking_uri(settings.url("mlflow"))
    mlflow.set_experiment("services-test")
    note = settings.state / "note.txt"
    note.write_text("tracked")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 0.5)
        mlflow.log_artifact(str(note))
    mlflow.set_tracking_uri(None)
    assert _count_runs(settings, "services-test") == 1
    stored = list((settings.state / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and run.info.run_id in stored[0].as_posix() and stored[0].read_text() == "tracked"
    # up again starts nothing: every process is the same
    pids = {s.name: s.pid for s in services.status(settings)}
    assert services.up(settings, log=lambda line: None) == []
    assert {s.name: s.pid for s in services.status(settings)} == pids


def test_the_flows_are_deployments_on_the_pool_and_a_worker_runs_them(settings, tmp_path):
    """Every deployment of chemgen.flows.deploy is on the server (the nightly one on its cron schedule); a run of
    the elucidation deployment is picked up by the worker and completes (its one query fails, as it should:
    the file does not exist), writing the batch where the run was told to."""
    import json
    import subprocess
    import sys

    from chemgen.flows.deploy import NIGHTLY_CRON

    services.up(settings, log=lambda line: None)
    env = {**os.environ, "PREFECT_API_URL": settings.url("prefect") + "/api",
           "PREFECT_HOME": str(settings.state / "prefect-home")}
    out = tmp_path / "batch"
    script = (
        "import json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.deployments import run_deployment\n"
        "with get_client(sync_client=True) as client:\n"
        "    deployments = client.read_deployments()\n"
        "    names = sorted(f'{client.read_flow(d.flow_id).name}/{d.name}' for d in deployments)\n"
        "    nightly = next(d for d in deployments if d.name == 'nightly')\n"
        "    crons = [s.schedule.cron for s in nightly.schedules]\n"
        "    pools = sorted({d.work_pool_name for d in deployments})\n"
        "run = run_deployment('elucidate/on-demand', timeout=300, parameters={'queries': [{'files': "
        "['/nonexistent/unknown.jdx']}], 'sources': ['library'], 'out_dir': sys.argv[1]})\n"
        "print(json.dumps({'names': names, 'crons': crons, 'pools': pools, 'state': run.state.name}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["names"] == ["crystal-screening/on-demand", "curate-spectra/on-demand", "curate/on-demand",
                               "elucidate/on-demand", "nightly-retrain/nightly"]
    assert answer["crons"] == [NIGHTLY_CRON] and answer["pools"] == [services.POOL]
    assert answer["state"] == "Completed", (settings.state / "worker-1.log").read_text()[-3000:]
    batch = json.loads((out / "batch.json").read_text())
    assert batch["failed"] == ["unknown"] and "no such file" in batch["queries"][0]["error"]


def test_the_web_apps_jobs_are_deployment_runs_and_cancelling_one_cancels_its_flow_run(settings, tmp_path):
    """The web app `up` starts signs users in by token and submits each job as a deployment run: a worker runs
    it and the page reads it back from Prefect; a job cancelled while it waits has its flow run cancelled."""
    import httpx

    from chemgen.paths import chemgen_home
    from chemgen.web.auth import UserStore

    from tests.web.conftest import spectrum_files, wait_finished

    services.up(settings, log=lambda line: None)
    token = UserStore(chemgen_home() / "web").add(f"ada-{settings.prefix}")
    headers = {"Authorization": f"Bearer {token}"}
    files = spectrum_files(tmp_path / "upload")
    base = settings.url("web")
    with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
        def submit() -> str:
            with open(files["ir"], "rb") as handle:
                # 'user' only: no library of the user's here, so the query fails fast and the flow run completes
                reply = http.post("/api/elucidate", files={"ir": ("q.ir.jdx", handle)}, data={"sources": ["user"]})
            assert reply.status_code == 202, reply.text
            return reply.json()["job"]

        done = wait_finished(http, submit(), timeout=240)   # an httpx client is a test client too
        assert done["state"] == "completed" and done["flow_run_id"], (done, (settings.state / "worker-1.log").read_text()[-3000:])
        waiting = submit()
        cancelled = http.post(f"/api/jobs/{waiting}/cancel").json()
        assert cancelled["outcome"] == "cancelled"
        state = http.get(f"/api/jobs/{waiting}").json()
        assert state["state"] == "failed" and "cancelled" in state["message"]
    env = {**os.environ, "PREFECT_API_URL": settings.url("prefect") + "/api",
           "PREFECT_HOME": str(settings.state / "prefect-home")}
    import subprocess
    import sys

    script = ("import sys, uuid\nfrom prefect.client.orchestration import get_client\n"
              "with get_client(sync_client=True) as c:\n"
              "    print(c.read_flow_run(uuid.UUID(sys.argv[1])).state.name)\n")
    read = subprocess.run([sys.executable, "-c", script, state["flow_run_id"]], env=env, capture_output=True,
                          text=True, timeout=120)
    assert read.stdout.strip() in ("Cancelled", "Cancelling"), read.stderr[-2000:]


def _client_env(settings) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": settings.url("prefect") + "/api",
            "PREFECT_HOME": str(settings.state / "prefect-home"), "MLFLOW_TRACKING_URI": settings.url("mlflow"),
            "CHEMGEN_HOME": str(settings.state.parent)}


def _python(settings, script: str, *args: str, timeout: int = 400):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script, *args], env=_client_env(settings), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:] + (settings.state / "worker-1.log").read_text()[-3000:]
    return done.stdout


def test_the_pool_runs_one_flow_run_at_a_time_and_chemgen_run_submits_the_nightly_deployment(settings, tmp_path):
    """The pool's concurrency limit, not the web server, queues the runs: with one slot, the nightly run that
    `chemgen run` submits waits while an elucidation runs. It is then cancelled (the demo would take minutes)."""
    import json
    import re
    import subprocess
    import sys
    import urllib.request

    services.up(settings, log=lambda line: None)
    with urllib.request.urlopen(f"{settings.url('prefect')}/api/work_pools/{services.POOL}", timeout=30) as reply:
        assert json.loads(reply.read())["concurrency_limit"] == settings.flow_runs == 1
    first = _python(settings, "import sys; from chemgen.flows.submit import submit; print(submit('elucidate/on-demand',"
                              " {'queries': [{'files': ['/nonexistent/a.jdx']}], 'sources': ['library'], "
                              "'out_dir': sys.argv[1]}).id)", str(tmp_path / "first")).split()[-1]
    cli = subprocess.run([sys.executable, "-m", "chemgen.cli", "run", "--profile", "demo", "--no-wait"],
                         env=_client_env(settings), capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "submitted nightly-retrain/nightly (demo)" in cli.stdout
    nightly = re.search(r"\(([0-9a-f-]{36})\)", cli.stdout).group(1)
    script = (
        "import json, sys, time, uuid\n"
        "from prefect.client.orchestration import get_client\n"
        "from chemgen.flows.submit import cancel, follow\n"
        "seen = []\n"
        "with get_client(sync_client=True) as c:\n"
        "    while True:\n"
        "        a, b = (c.read_flow_run(uuid.UUID(i)) for i in sys.argv[1:3])\n"
        "        seen.append([a.state.name, b.state.name])\n"
        "        if a.state.is_final():\n"
        "            break\n"
        "        time.sleep(0.5)\n"
        "    cancel(sys.argv[2])\n"
        "    for _ in range(240):\n"
        "        b = c.read_flow_run(uuid.UUID(sys.argv[2]))\n"
        "        if b.state.is_final():\n"
        "            break\n"
        "        time.sleep(0.5)\n"
        "    d = c.read_deployment(b.deployment_id)\n"
        "print(json.dumps({'seen': seen, 'b': b.state.name, 'params': b.parameters, 'deployment': d.name}))\n")
    answer = json.loads(_python(settings, script, first, nightly).strip().splitlines()[-1])
    assert answer["seen"][-1][0] == "Completed"
    # never both running: the nightly run waited for the slot
    assert not any(a == "Running" and b == "Running" for a, b in answer["seen"]), answer["seen"]
    assert all(b in ("Scheduled", "Late", "Pending") for a, b in answer["seen"] if a == "Running")
    assert answer["b"] == "Cancelled" and answer["params"] == {"profile": "demo"}
    assert answer["deployment"] == "nightly"


@pytest.mark.reliability
def test_a_worker_killed_mid_flow_leaves_a_crashed_run_that_a_rerun_completes(settings, tmp_path):
    """The worker and its flow run's process are killed (SIGKILL: nothing of them runs again, as when their machine
    dies). `up` restarts the worker and marks the run Crashed; `chemgen flows rerun` runs it again to completion."""
    import json
    import subprocess
    import sys

    from tests.web.conftest import spectrum_files

    services.up(settings, log=lambda line: None)
    files = spectrum_files(tmp_path / "query")
    out = tmp_path / "batch"
    # DiffSpectra samples for the query: seconds of work in the flow run's own process
    script = (
        "import json, sys, time, uuid\n"
        "from prefect.client.orchestration import get_client\n"
        "from chemgen.flows.submit import submit\n"
        "run = submit('elucidate/on-demand', {'queries': [{'files': [sys.argv[1]], 'name': 'q'}], 'sources': "
        "['model', 'library'], 'samples': 8, 'steps': 40, 'rerank': False, 'out_dir': sys.argv[2]})\n"
        "with get_client(sync_client=True) as c:\n"
        "    for _ in range(400):\n"
        "        r = c.read_flow_run(uuid.UUID(run.id))\n"
        "        if r.state.name == 'Running' and r.infrastructure_pid:\n"
        "            break\n"
        "        time.sleep(0.25)\n"
        "print(json.dumps({'id': run.id, 'state': r.state.name, 'pid': r.infrastructure_pid}))\n")
    started = json.loads(_python(settings, script, f"ir:{files['ir']}", str(out)).strip().splitlines()[-1])
    assert started["state"] == "Running", started
    worker = next(s for s in services.status(settings) if s.name == "worker-1")
    flow_pid = int(str(started["pid"]).rpartition(":")[2])
    for group in {os.getpgid(flow_pid), worker.pid}:
        os.killpg(group, signal.SIGKILL)
    lines: list[str] = []
    assert services.up(settings, log=lines.append) == ["worker-1"]
    assert any(started["id"] in line and "marked Crashed" in line for line in lines), lines
    state = _python(settings, "import sys, uuid\nfrom chemgen.flows.submit import state_of\n"
                              "print(state_of(sys.argv[1])[0])", started["id"]).split()[-1]
    assert state == "Crashed"
    assert not (out / "batch.json").exists()   # the killed run finished nothing
    rerun = subprocess.run([sys.executable, "-m", "chemgen.cli", "flows", "rerun", started["id"]],
                           env=_client_env(settings), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "Completed" in rerun.stdout
    batch = json.loads((out / "batch.json").read_text())
    assert batch["queries"][0]["status"] == "done" and not batch["failed"]


@pytest.mark.reliability
def test_a_registration_killed_half_way_is_removed_and_the_champion_kept(settings, tmp_path):
    """A process registering a model is SIGKILLed after the version exists and before its registration finished:
    the half-registered version is removed (by `up`, as by the next registration), the champion stays."""
    import mlflow
    from mlflow import MlflowClient

    services.up(settings, log=lambda line: None)
    name = f"killed-{uuid.uuid4().hex[:6]}"
    script = (
        "import os, signal, sys\n"
        "from chemgen import tracking\n"
        "from chemgen.registry.register import register\n"
        "from chemgen.lineage import shipped_lineage\n"
        "version = register(shipped_lineage('gfmdiff-cpu'), sys.argv[1])\n"
        "tracking.promote(sys.argv[1], version.version, expected=None)\n"
        "def killed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "tracking.set_alias = killed\n"
        "register(shipped_lineage('gfmdiff-cpu'), sys.argv[1])\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script, name], env=_client_env(settings), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    registry = MlflowClient(tracking_uri=settings.url("mlflow"), registry_uri=settings.url("mlflow"))
    versions = {v.version: v for v in registry.search_model_versions(f"name='{name}'")}
    assert sorted(versions) == ["1", "2"] and "chemgen.complete" not in versions["2"].tags
    lines: list[str] = []
    services.up(settings, log=lines.append)
    assert f"{name} version 2: removed (its registration was killed before it finished)" in lines
    assert [v.version for v in registry.search_model_versions(f"name='{name}'")] == ["1"]
    assert registry.get_model_version_by_alias(name, "champion").version == "1"
    mlflow.set_tracking_uri(None)


@pytest.mark.reliability
def test_the_mlflow_server_restarted_during_a_nightly_run_loses_nothing(settings):
    """A nightly run (GFMDiff's branch, tiny config and budgets, from scratch, against a registered champion) tracks
    to the MLflow server while the server is stopped and started again: the run completes or fails with a clear
    error, a second run completes, and every version registered before is still there, complete, with the
    champion on one of them."""
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    services.up(settings, log=lambda line: None)
    name = f"chemgen-gfmdiff-restart-{uuid.uuid4().hex[:6]}"   # a chemgen-gfmdiff name: GFMDiff's gate
    registry = MlflowClient(tracking_uri=settings.url("mlflow"), registry_uri=settings.url("mlflow"))
    _python(settings, "import sys\nfrom chemgen import tracking\nfrom chemgen.lineage import shipped_lineage\n"
                      "from chemgen.registry.register import register\n"
                      "v = register(shipped_lineage('gfmdiff-cpu'), sys.argv[1])\n"
                      "tracking.promote(sys.argv[1], v.version, expected=None)\n", name)
    before = {v.version for v in registry.search_model_versions(f"name='{name}'")}
    script = (
        "import sys\n"
        "from chemgen.flows.retrain import nightly_retrain\n"
        "quick = {'config': 'tiny', 'init': None, 'minutes': {'denoiser': 0.5}, 'steps': None, 'samples': 4,\n"
        "         'sample_steps': 3}\n"
        "state = nightly_retrain(profile='demo', models=['gfmdiff'], model_names={'gfmdiff': sys.argv[1]},\n"
        "                        overrides={'qm9_rows': 200, 'gfmdiff': quick}, return_state=True)\n"
        "result = state.result(raise_on_failure=False)\n"
        "result = result if isinstance(result, dict) else getattr(result, 'result', {})\n"
        "print('STATE', state.name)\n"
        "print('BRANCH', result.get('branches', {}).get('gfmdiff', {}).get('status'), repr(result)[-2000:])\n")

    def retrain_running() -> bool:
        experiments = [e.experiment_id for e in registry.search_experiments()]
        return bool(registry.search_runs(experiments, f"tags.registered_name = '{name}' and "
                                                      "attributes.status = 'RUNNING'"))

    def nightly(restart: bool):
        process = subprocess.Popen([sys.executable, "-c", script, name], env=_client_env(settings),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if restart:
            # restart once the model's branch is tracking (its training then runs 30 s more), whatever the machine's
            # speed: a fixed delay let a fast machine finish the run before the restart
            deadline = time.monotonic() + 600
            while not retrain_running():
                assert process.poll() is None, ("the run ended before its branch started", process.communicate())
                assert time.monotonic() < deadline, "the branch did not start in 10 minutes"
                time.sleep(0.5)
            time.sleep(3)
            assert process.poll() is None, "the run ended before the restart"
            services._stop(settings.state, "mlflow")
            time.sleep(3)
            assert services.up(settings, log=lambda line: None) == ["mlflow"]
        out, err = process.communicate(timeout=900)
        return process.returncode, out, err

    code, out, err = nightly(restart=True)
    # completed through the restart (MLflow's client retries), or failed with the error said, not hung or half-done
    assert ("STATE Completed" in out and "BRANCH registered" in out) or "STATE Failed" in out, (code, out, err[-3000:])
    services.up(settings, log=lambda line: None)   # removes anything the restart left half-registered
    code, out, err = nightly(restart=False)
    assert code == 0 and "STATE Completed" in out and "BRANCH registered" in out, (out, err[-3000:])
    after = {v.version: v for v in registry.search_model_versions(f"name='{name}'")}
    assert before <= set(after) and len(after) > len(before)     # no registered version lost; the rerun's added
    assert all("chemgen.complete" in v.tags for v in after.values())
    assert registry.get_model_version_by_alias(name, "champion").version in after


def test_a_dead_service_makes_status_fail_and_up_restarts_only_it(settings):
    services.up(settings, log=lambda line: None)
    web = next(s for s in services.status(settings) if s.name == "web")
    os.killpg(web.pid, signal.SIGKILL)
    assert _cli(settings, "status").exit_code == 1
    assert services.up(settings, log=lambda line: None) == ["web"]
    assert _cli(settings, "status").exit_code == 0


def test_down_stops_everything(settings):
    services.up(settings, log=lambda line: None)
    stopped = services.down(settings.state, log=lambda line: None)
    assert sorted(stopped) == ["mlflow", "prefect", "web", "worker-1"]
    assert not any(s.alive for s in services.status(settings))
    assert _cli(settings, "status").exit_code == 1


def test_a_missing_or_wrong_database_is_a_clear_error_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv(services.DATABASE_ENV, raising=False)
    with pytest.raises(UsageError, match="no database: give --database-url"):
        services.from_options(None)
    with pytest.raises(UsageError, match="a PostgreSQL URL"):
        services.from_options("mysql://root@localhost/x")
    unreachable = services.from_options(f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres",
                                        state_dir=str(tmp_path / "state"))
    with pytest.raises(services.ServiceError, match="cannot connect"):
        services.up(unreachable, log=lambda line: None)
    assert not list((tmp_path / "state").glob("*.pid"))

"""`chemgen services` against a real PostgreSQL server: the MLflow and Prefect servers on it, a worker, the web app.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) or $CHEMGEN_TEST_DATABASE_URL; without one the tests say so and
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

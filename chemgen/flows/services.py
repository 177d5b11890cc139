"""chemgen as a shared service on one host: the MLflow tracking server, the Prefect server, a Prefect work pool
with its process workers and the web app, each a process of its own, bound to 127.0.0.1 unless told otherwise.

``chemgen services up | down | status | env`` calls `up`, `down`, `status` and `env_lines`::

    MLflow    mlflow server, backend store on PostgreSQL (database <prefix>_mlflow), artifacts served by the
              server from a folder (default $CHEMGEN_HOME/services/artifacts) or any fsspec / S3 URL
    Prefect   prefect server, on PostgreSQL (database <prefix>_prefect, through asyncpg)
    workers   N ``prefect worker start`` processes on the process pool `POOL` (created if missing), which run
              the deployments `register_deployments` puts there (chemgen.flows.deploy: nightly retraining on
              its cron schedule, curation, screening, spectra curation, elucidation)
    web       ``chemgen serve --auth token --dispatch deployment`` (users: ``chemgen users add``): its jobs are
              deployment runs the workers pick up, tracked by the MLflow server

The PostgreSQL server comes from ``--database-url`` or ``$CHEMGEN_DATABASE_URL`` (``postgresql://USER[:PASSWORD]@
HOST:PORT/ANY``); each service gets a database of its own there, created on the first ``up``. Every service keeps
its log and pid under ``$CHEMGEN_HOME/services/`` (``<name>.log``, ``<name>.pid``), and the URLs the processes
serve are recorded in ``services.json``: ``status`` and ``env`` read them, ``down`` stops what it names.

``up`` is idempotent: a service whose process is alive and answers is left as it is; one that is not is
(re)started, and ``up`` waits until each answers (or fails, naming the service and the end of its log).
``status`` is healthy only when every service answers. The embedded defaults (SQLite, an ephemeral Prefect
server) stay what ``make run`` and a plain ``chemgen`` command use until the ``env`` lines are exported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chemgen.errors import ChemgenError, UsageError
from chemgen.paths import chemgen_home

DATABASE_ENV = "CHEMGEN_DATABASE_URL"
POOL = "chemgen-process"              # the process pool of prefect.yaml (chemgen.flows.deploy.PROCESS_POOL)
DEFAULT_PORTS = {"mlflow": 5000, "prefect": 4200, "web": 8765}
START_TIMEOUT_S = 180                 # the Prefect server migrates its database on the first start: a minute
STOP_TIMEOUT_S = 30


class ServiceError(ChemgenError, RuntimeError):
    """A service that would not start, answer or stop; the message names it and quotes its log."""


@dataclass(frozen=True)
class Settings:
    """Where the services run and what they use (`from_options` fills it from the command line and the
    environment)."""

    database_url: str                           # the PostgreSQL server: postgresql://user[:password]@host:port/db
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    workers: int = 2
    concurrency: int = 0                        # flow runs at once on the pool; 0 -> one per worker
    artifacts: str = ""                         # folder or fsspec/S3 URL; "" -> <state>/artifacts
    prefix: str = "chemgen"                     # databases <prefix>_mlflow and <prefix>_prefect
    web_auth: str = "token"                     # the web app's users: chemgen users add (`chemgen.web.auth`)
    state_dir: str = ""                         # logs, pids, services.json; "" -> $CHEMGEN_HOME/services

    @property
    def state(self) -> Path:
        return Path(self.state_dir) if self.state_dir else chemgen_home() / "services"

    @property
    def flow_runs(self) -> int:
        """The pool's concurrency limit: how many flow runs its workers run at once, all users and flows together
        (chemgen's flows use every core they are given, so one per worker by default)."""
        return self.concurrency or max(1, self.workers)

    @property
    def artifact_destination(self) -> str:
        return self.artifacts or str(self.state / "artifacts")

    def url(self, service: str) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host   # where a client on this host connects
        return f"http://{host}:{self.ports[service]}"

    def database(self, service: str, driver: str = "") -> str:
        """The URL of ``service``'s own database on the server (``driver``: e.g. ``asyncpg``)."""
        parts = urlsplit(self.database_url)
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        return urlunsplit((scheme, parts.netloc, f"/{self.prefix}_{service}", "", ""))


def from_options(database_url: str | None = None, **options: Any) -> Settings:
    """`Settings` from the options given, ``$CHEMGEN_DATABASE_URL`` for the database; `UsageError` naming
    what is missing or wrong."""
    url = database_url or os.environ.get(DATABASE_ENV)
    if not url:
        raise UsageError(f"no database: give --database-url postgresql://USER@HOST:PORT/postgres or set {DATABASE_ENV}")
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres") or not parts.hostname:
        raise UsageError(f"database URL {_hide_password(url)!r}: a PostgreSQL URL, postgresql://USER@HOST:PORT/DB")
    settings = Settings(database_url=urlunsplit(("postgresql", parts.netloc, parts.path or "/postgres", "", "")),
                        **{k: v for k, v in options.items() if v is not None})
    if settings.workers < 0:
        raise UsageError(f"workers must be 0 or more, got {settings.workers}")
    if settings.concurrency < 0:
        raise UsageError(f"concurrency must be 1 or more (0: one flow run per worker), got {settings.concurrency}")
    for name, port in settings.ports.items():
        if not 1 <= int(port) <= 65535:
            raise UsageError(f"{name} port must be 1-65535, got {port}")
    if not settings.prefix.replace("_", "").isalnum() or not settings.prefix[0].isalpha():
        raise UsageError(f"database prefix {settings.prefix!r}: letters, digits and '_', starting with a letter")
    return settings


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


# ---------------------------------------------------------------------------- the database
def ensure_databases(settings: Settings, services: Sequence[str] = ("mlflow", "prefect")) -> list[str]:
    """Create each service's database on the server if it is missing; returns those created."""
    import asyncio

    import asyncpg

    async def create() -> list[str]:
        try:
            connection = await asyncpg.connect(settings.database_url, timeout=10)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as err:
            raise ServiceError(f"PostgreSQL at {_hide_password(settings.database_url)}: cannot connect ({err})") from None
        created = []
        try:
            for service in services:
                name = f"{settings.prefix}_{service}"
                if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await connection.execute(f'CREATE DATABASE "{name}"')
                    created.append(name)
        finally:
            await connection.close()
        return created

    return asyncio.run(create())


def drop_databases(settings: Settings, services: Sequence[str] = ("mlflow", "prefect")) -> None:
    """Drop the services' databases (the services must be down): what ``down --drop`` does."""
    import asyncio

    import asyncpg

    async def drop() -> None:
        connection = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            for service in services:
                await connection.execute(f'DROP DATABASE IF EXISTS "{settings.prefix}_{service}" WITH (FORCE)')
        finally:
            await connection.close()

    asyncio.run(drop())


# ---------------------------------------------------------------------------- the processes
@dataclass(frozen=True)
class Service:
    """One process: its name, command, environment additions, and what says it is healthy: an URL answering
    200, or for a worker the Prefect server listing it ONLINE in the pool (its heartbeat)."""

    name: str
    command: list[str]
    env: dict[str, str]
    health: str                  # the URL checked (a worker: the pool's workers on the Prefect server)
    worker: str | None = None    # the worker's name in the pool

    def answers(self) -> bool:
        return _worker_online(self.health, self.worker) if self.worker else _answers(self.health)


def services(settings: Settings) -> list[Service]:
    """Every service, in the order they start (each needs the ones before it)."""
    python = sys.executable
    mlflow_url, prefect_api = settings.url("mlflow"), settings.url("prefect") + "/api"
    prefect_home = str(settings.state / "prefect-home")
    client_env = {"MLFLOW_TRACKING_URI": mlflow_url, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": prefect_home}
    out = [
        Service("mlflow", [python, "-m", "mlflow", "server", "--backend-store-uri", settings.database("mlflow", "psycopg2"),
                           "--artifacts-destination", settings.artifact_destination, "--serve-artifacts",
                           "--host", settings.host, "--port", str(settings.ports["mlflow"]), "--workers", "1"],
                {}, mlflow_url + "/health"),
        Service("prefect", [python, "-m", "prefect", "server", "start", "--host", settings.host,
                            "--port", str(settings.ports["prefect"])],
                {"PREFECT_API_DATABASE_CONNECTION_URL": settings.database("prefect", "asyncpg"),
                 "PREFECT_HOME": prefect_home, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_API_URL": ""},    # "": unset, the server is not a client of another
                prefect_api + "/health"),
    ]
    for i in range(1, settings.workers + 1):
        out.append(Service(f"worker-{i}", [python, "-m", "prefect", "worker", "start", "--pool", POOL, "--type",
                                           "process", "--name", f"chemgen-worker-{i}"],
                           {**client_env, "PREFECT_WORKER_HEARTBEAT_SECONDS": "10"},
                           f"{prefect_api}/work_pools/{POOL}/workers/filter", f"chemgen-worker-{i}"))
    out.append(Service("web", [python, "-m", "chemgen.cli", "serve", "--host", settings.host,
                               "--port", str(settings.ports["web"]), "--auth", settings.web_auth,
                               "--dispatch", "deployment"],
                       client_env, settings.url("web") + "/healthz"))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _answers(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:   # noqa: S310 - our own http URLs
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _worker_online(url: str, name: str, timeout: float = 3.0) -> bool:
    """Whether the Prefect server (``url``: the pool's workers/filter endpoint) lists worker ``name`` ONLINE."""
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:   # noqa: S310 - our own http URL
            workers = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)


def _pid(state: Path, name: str) -> int | None:
    try:
        return int((state / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _healthy(state: Path, service: Service) -> bool:
    pid = _pid(state, service.name)
    return pid is not None and _alive(pid) and service.answers()


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(state: Path, service: Service, base_env: Mapping[str, str]) -> int:
    log = open(state / f"{service.name}.log", "ab")  # noqa: SIM115 - handed to the child, closed below
    env = {**base_env, **service.env}
    env = {k: v for k, v in env.items() if v != ""}    # "" removes a variable (PREFECT_API_URL for the server)
    try:
        process = subprocess.Popen(service.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, cwd=state)
    finally:
        log.close()
    _write_text(state / f"{service.name}.pid", f"{process.pid}\n")
    return process.pid


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _wait(state: Path, service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pid = _pid(state, service.name)
    while time.monotonic() < deadline:
        if pid is None or not _alive(pid):
            raise ServiceError(f"{service.name} exited while starting; the end of {state / service.name}.log:\n"
                               f"{_log_tail(state / f'{service.name}.log')}")
        if service.answers():
            return
        time.sleep(0.5)
    raise ServiceError(f"{service.name} did not answer ({service.health}) within {timeout:.0f} s; the end of "
                       f"{state / service.name}.log:\n{_log_tail(state / f'{service.name}.log')}")


def _ensure_pool(settings: Settings) -> bool:
    """The process work pool on the Prefect server, with its concurrency limit (`Settings.flow_runs`): the pool,
    not the web server or lock files, decides how many flow runs run at once; the others wait as Late/Scheduled
    until a slot frees. True if the pool was created."""
    env = {**os.environ, "PREFECT_API_URL": settings.url("prefect") + "/api",
           "PREFECT_HOME": str(settings.state / "prefect-home")}
    found = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "inspect", POOL], env=env,
                           capture_output=True, text=True, timeout=120)
    if found.returncode != 0:
        made = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", POOL, "--type", "process"],
                              env=env, capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise ServiceError(f"work pool {POOL}: could not be created on {settings.url('prefect')}:\n"
                               f"{(made.stdout + made.stderr)[-2000:]}")
    limited = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "set-concurrency-limit", POOL,
                              str(settings.flow_runs)], env=env, capture_output=True, text=True, timeout=120)
    if limited.returncode != 0:
        raise ServiceError(f"work pool {POOL}: could not set its concurrency limit:\n"
                           f"{(limited.stdout + limited.stderr)[-2000:]}")
    return found.returncode != 0


def _api(settings: Settings, path: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to the Prefect server's REST API (no Prefect client: its settings are this process's)."""
    request = urllib.request.Request(f"{settings.url('prefect')}/api/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        text = reply.read()
    return json.loads(text) if text else None


def reap_crashed_runs(settings: Settings) -> list[str]:
    """Flow runs of the pool that the server believes are running but whose process is gone (a worker killed with
    its flow runs, a machine restarted): set Crashed, so that their jobs say so and a retry can start. Returns
    their ids. The pool's workers are this host's (`up` runs them), so a missing process is a dead one."""
    runs = _api(settings, "flow_runs/filter", {
        "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "CANCELLING"]}}},
        "work_pools": {"name": {"any_": [POOL]}}})
    crashed = []
    for run in runs:
        pid = str(run.get("infrastructure_pid") or "").rpartition(":")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        _api(settings, f"flow_runs/{run['id']}/set_state", {"state": {
            "type": "CRASHED", "name": "Crashed",
            "message": f"its process {pid} is gone: the worker running it died (found by chemgen services up)"},
            "force": True})
        crashed.append(run["id"])
    return crashed


def remove_half_registered(settings: Settings) -> list[tuple[str, str]]:
    """Model versions on the MLflow server whose registration was killed before it finished
    (`chemgen.tracking.incomplete_versions`), deleted."""
    from mlflow import MlflowClient

    from chemgen import tracking

    registry = MlflowClient(tracking_uri=settings.url("mlflow"), registry_uri=settings.url("mlflow"))
    return tracking.remove_incomplete_versions(registry=registry)


def code_root() -> Path:
    """The folder the deployments' entrypoints (``chemgen/flows/<flow>.py:<function>``) are relative to: the source
    checkout, or site-packages for an installed chemgen."""
    import chemgen

    return Path(chemgen.__file__).resolve().parent.parent


def register_deployments(settings: Settings) -> int:
    """Every deployment of `chemgen.flows.deploy.DEPLOYMENTS` on the process pool of the Prefect server (the
    nightly retraining with its cron schedule, curation, screening, spectra curation, elucidation): written as a
    prefect.yaml without the Kubernetes twins and deployed with ``prefect deploy --all``. Idempotent: a deployment
    that exists is updated. Returns how many there are."""
    from chemgen.flows.deploy import prefect_yaml_spec, render_prefect_yaml

    spec_file = settings.state / "prefect.yaml"
    _write_text(spec_file, render_prefect_yaml(kubernetes=False, directory=str(code_root())))
    env = {**os.environ, "PREFECT_API_URL": settings.url("prefect") + "/api",
           "PREFECT_HOME": str(settings.state / "prefect-home")}
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file",
                           str(spec_file)], cwd=code_root(), env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ServiceError(f"registering the deployments on {settings.url('prefect')} failed:\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    return len(prefect_yaml_spec(kubernetes=False)["deployments"])


def _record(settings: Settings) -> None:
    record = {**asdict(settings), "database_url": _hide_password(settings.database_url),
              "urls": {name: settings.url(name) for name in DEFAULT_PORTS}, "pool": POOL,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_text(settings.state / "services.json", json.dumps(record, indent=1) + "\n")


def read_record(state_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """What the last ``up`` recorded (URLs, ports, workers), or None where nothing was started."""
    state = Path(state_dir) if state_dir else chemgen_home() / "services"
    try:
        return json.loads((state / "services.json").read_text())
    except (OSError, ValueError):
        return None


def up(settings: Settings, log: Callable[[str], None] = print, timeout: float = START_TIMEOUT_S) -> list[str]:
    """Start every service that is not healthy and wait until each answers; returns the names started."""
    state = settings.state
    state.mkdir(parents=True, exist_ok=True)
    (state / "prefect-home").mkdir(exist_ok=True)
    if "://" not in settings.artifact_destination:
        Path(settings.artifact_destination).mkdir(parents=True, exist_ok=True)
    created = ensure_databases(settings)
    for name in created:
        log(f"created database {name}")
    started = []
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME")}
    base_env.setdefault("CHEMGEN_HOME", str(chemgen_home()))
    wanted = services(settings)
    _record(settings)
    pool_checked = False
    for service in wanted:
        if _healthy(state, service):
            log(f"{service.name}: running (pid {_pid(state, service.name)})")
            continue
        stale = _pid(state, service.name)
        if stale is not None and _alive(stale):     # alive but not answering: replaced
            _stop(state, service.name)
        if service.name.startswith("worker-") and not pool_checked:
            if _ensure_pool(settings):
                log(f"created work pool {POOL} (process)")
            pool_checked = True
        pid = _start(state, service, base_env)
        _wait(state, service, timeout)
        started.append(service.name)
        log(f"{service.name}: started (pid {pid})" + ("" if service.worker else f", {service.health}"))
    # no worker started now (all running, or --workers 0): the deployments need the pool, and its limit follows
    # this `up`'s settings
    if not pool_checked and _ensure_pool(settings):
        log(f"created work pool {POOL} (process)")
    log(f"work pool {POOL}: at most {settings.flow_runs} flow run{'s' * (settings.flow_runs > 1)} at once")
    for run_id in reap_crashed_runs(settings):
        log(f"flow run {run_id}: marked Crashed (its process died with its worker); `chemgen flows rerun {run_id}` completes it")
    for name, version in remove_half_registered(settings):
        log(f"{name} version {version}: removed (its registration was killed before it finished)")
    count = register_deployments(settings)
    log(f"{count} deployments on {POOL} (prefect deployment ls)")
    # workers beyond the number asked for (an earlier `up --workers 4`) are stopped
    names = {s.name for s in wanted}
    for pid_file in sorted(state.glob("worker-*.pid")):
        if pid_file.stem not in names:
            _stop(state, pid_file.stem)
            log(f"{pid_file.stem}: stopped (not asked for)")
    return started


def _stop(state: Path, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the process group of ``name`` (SIGTERM, then SIGKILL); True if one was running."""
    pid = _pid(state, name)
    running = pid is not None and _alive(pid)
    if running:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (state / f"{name}.pid").unlink(missing_ok=True)
    return running


def down(state_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Stop every service ``up`` started, the web app and workers first; returns those that were running."""
    state = Path(state_dir) if state_dir else chemgen_home() / "services"
    names = [p.stem for p in state.glob("*.pid")]
    order = sorted(names, key=lambda n: (n != "web", not n.startswith("worker-"), n == "mlflow", n == "prefect", n))
    stopped = [name for name in order if _stop(state, name)]
    for name in stopped:
        log(f"{name}: stopped")
    return stopped


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    alive: bool
    healthy: bool
    url: str | None
    log: Path


def status(settings: Settings) -> list[ServiceState]:
    """Every service's process and answer."""
    state = settings.state
    out = []
    for service in services(settings):
        pid = _pid(state, service.name)
        alive = pid is not None and _alive(pid)
        healthy = alive and service.answers()
        out.append(ServiceState(service.name, pid, alive, healthy,
                                f"{POOL} on the Prefect server" if service.worker else service.health,
                                state / f"{service.name}.log"))
    return out


def settings_from_record(state_dir: str | os.PathLike | None = None, database_url: str | None = None) -> Settings:
    """The settings of the last ``up`` (for ``status``, ``env`` and ``down`` without options)."""
    record = read_record(state_dir)
    if record is None:
        raise UsageError(f"no services started under {Path(state_dir) if state_dir else chemgen_home() / 'services'}: "
                         "run `chemgen services up` first")
    keys = ("host", "ports", "workers", "artifacts", "prefix", "state_dir", "web_auth")
    url = database_url or os.environ.get(DATABASE_ENV) or record["database_url"]
    return Settings(database_url=url, **{k: record[k] for k in keys})


def env_lines(settings: Settings) -> list[str]:
    """The ``export`` lines that point a shell's chemgen, MLflow and Prefect at the services."""
    return [f"export MLFLOW_TRACKING_URI={settings.url('mlflow')}",
            f"export PREFECT_API_URL={settings.url('prefect')}/api",
            f"export CHEMGEN_WEB_URL={settings.url('web')}"]

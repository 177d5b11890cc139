"""The Dockerfile and compose.yaml agree with the code and the lock: the image prefect.yaml names, the pool, the
torch pin, the environment chemgen reads, ports on 127.0.0.1 only. `docker compose config` checks the file where
the compose client exists (no container engine runs on these machines, so nothing is built or started)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from chemgen.flows import deploy

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CHEMGEN_SERVICES = ("mlflow", "prefect", "worker", "web")


def test_compose_runs_the_team_topology_from_the_image_prefect_yaml_names():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", *CHEMGEN_SERVICES}
    for name in CHEMGEN_SERVICES:
        image = services[name]["image"]
        assert re.fullmatch(r"\$\{CHEMGEN_IMAGE:-(.+)\}", image).group(1) == deploy.KUBERNETES_IMAGE, name
        assert services[name]["build"]["context"] == "."
    assert deploy.KUBERNETES_IMAGE in (ROOT / "prefect.yaml").read_text()
    # every published port on this host only; every dependency waited for until healthy
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for needed, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"} and "healthcheck" in services[needed], (name, needed)
    # the workers serve the pool prefect.yaml deploys to; the clients point at the two servers
    assert f"--pool {deploy.PROCESS_POOL}" in " ".join(services["worker"]["command"])
    for name in ("worker", "web"):
        assert services[name]["environment"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                                 "PREFECT_API_URL": "http://prefect:4200/api"}
    # the two databases: MLflow's made by the image's POSTGRES_DB, Prefect's by the init script
    mlflow_uri = services["mlflow"]["command"][services["mlflow"]["command"].index("--backend-store-uri") + 1]
    prefect_uri = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert mlflow_uri.startswith("postgresql+psycopg2://") and mlflow_uri.endswith("/chemgen_mlflow")
    assert prefect_uri.startswith("postgresql+asyncpg://") and prefect_uri.endswith("/chemgen_prefect")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "chemgen_mlflow"
    init = services["postgres"]["volumes"][1].split(":")[0]
    assert "CREATE DATABASE chemgen_prefect" in (ROOT / init).read_text()


def test_the_dockerfile_installs_the_lock_with_the_locked_torch_and_sets_what_chemgen_reads():
    locked = re.search(r"^torch==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert f"pip install torch=={locked} --index-url https://download.pytorch.org/whl/${{TORCH_VARIANT}}" in DOCKERFILE
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", DOCKERFILE, re.M)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the checkout"
    from chemgen import paths
    from chemgen.web.settings import THREEDMOL_ENV

    for variable in (paths.HOME_ENV, paths.DATA_DIR_ENV, paths.WEIGHTS_DIR_ENV, "CHEMGEN_SPECTRA_DIR", THREEDMOL_ENV):
        assert re.search(rf"\b{variable}=/", DOCKERFILE), variable
    assert "pip install --no-deps -r /tmp/requirements.txt" in DOCKERFILE   # the lock exactly, nothing resolved


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0, reason="no docker compose client here")
def test_docker_compose_accepts_the_file():
    env = {**os.environ, "POSTGRES_PASSWORD": "check"}
    done = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

"""Crystal screening end to end, and tracking against a real MLflow server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pandas as pd
import pytest

from chemgen import tracking
from chemgen.data.tensors import TensorPack


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, qm9_systems, mp20_systems):
    from chemgen.config import load_config
    from chemgen.generation.training import train_stages

    out = tmp_path_factory.mktemp("tiny-model")
    pack = TensorPack.from_systems([*qm9_systems[:16], *mp20_systems[:16]])
    train_stages("adit", load_config("tiny"), pack, pack, out, steps={"vae": 20, "dit": 20}, tokens_per_batch=512,
                 device="cpu", log=lambda line: None)
    return out / "lineage"


@pytest.fixture(scope="module")
def small_references(tmp_path_factory, data_dir):
    """CHGNet elemental references fitted on 40 MP-20 val rows (the full fit takes minutes)."""
    from pymatgen.core import Structure

    from chemgen.scoring.hull import chgnet_energies_per_atom, fit_elemental_references

    rows = pd.read_csv(data_dir / "mp_20" / "val.csv.gz", nrows=40)
    energies = chgnet_energies_per_atom([Structure.from_str(c, fmt="cif") for c in rows.cif])
    refs = fit_elemental_references(rows.pretty_formula, energies, rows.formation_energy_per_atom)
    path = tmp_path_factory.mktemp("refs") / "refs.json"
    refs.to_json(path)
    return path


def test_crystal_screening_writes_ranked_candidates_and_report(tiny_model_dir, small_references, tmp_path, mp20_slice_dir):
    from chemgen.data import BUILDERS
    from chemgen.data.store import curate
    from workflows.screen import crystal_screening

    curate(BUILDERS["mp20"](data_dir=mp20_slice_dir), progress=False)  # novelty reference
    result = crystal_screening(n=8, model=str(tiny_model_dir), relax_steps=5, references_path=str(small_references),
                               out_dir=str(tmp_path / "screen"), chunk=4, sigma=0.06, workers=2)
    table = pd.read_csv(tmp_path / "screen" / "candidates.csv")
    assert len(table) == 8 and {"e_above_hull", "sun", "msun", "valid"} <= set(table.columns)
    assert (tmp_path / "screen" / "report.md").read_text().startswith("# Crystal screening report (8 generated)")
    assert (tmp_path / "screen" / "e_above_hull.png").read_bytes()[:4] == b"\x89PNG"
    metrics = result["metrics"]
    assert 0 <= metrics["chgnet_mp20/metastable_rate"] <= metrics["cdvae/valid"] + 1e-12
    assert 0 <= metrics["chgnet_mp20/expected_stable_count"] <= 8 and metrics["chgnet_mp20/sigma"] == 0.06
    assert set(table.relax_status.dropna()) <= {"converged", "step_cap", "time_budget", "failed"}
    # the hull and references were loaded by one task, before one relaxation task per chunk of 4 valid candidates
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result["flow_run_id"]])))
    names = [r.name.rsplit("-", 1)[0] for r in runs]
    assert names.count("load-hull-and-references") == 1
    assert names.count("relax-and-hull") == -(-int(table.valid.sum()) // 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path, monkeypatch):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the MLflow server did not start on 127.0.0.1 within 90 s")
            time.sleep(0.5)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def test_tracking_and_registry_against_a_real_mlflow_server(mlflow_server, tiny_model_dir):
    from chemgen.generation.jobs import register

    assert tracking.tracking_uri() == mlflow_server
    with tracking.run("server-check", tags={"purpose": "test"}) as run:
        tracking.log_params({"a": 1})
        tracking.log_metrics({"edm/validity": 0.5})
        version = register(tiny_model_dir, "chemgen-adit-server", metrics={"edm/validity": 0.5})
    stored = tracking.client().get_run(run.info.run_id)
    assert stored.data.metrics["edm/validity"] == 0.5 and stored.data.params["a"] == "1"
    assert tracking.version_by_alias("chemgen-adit-server", tracking.CHALLENGER).version in (version.version, str(version.version))
    frame = mlflow.pyfunc.load_model("models:/chemgen-adit-server@challenger").predict(
        pd.DataFrame([{"kind": "crystal", "n": 2, "seed": 0}]))
    assert len(frame) == 2

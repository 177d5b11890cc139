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
    from chemgen.models.specs import load_config
    from chemgen.training.stages import train_stages

    out = tmp_path_factory.mktemp("tiny-model")
    pack = TensorPack.from_systems([*qm9_systems[:16], *mp20_systems[:16]])
    train_stages("adit", load_config("tiny"), pack, pack, out, steps={"vae": 20, "dit": 20}, tokens_per_batch=512,
                 device="cpu", log=lambda line: None)
    return out / "lineage"


@pytest.fixture(scope="module")
def novelty_reference(mp20_slice_dir):
    """MP-20's slice curated into the test store: the training split novelty is judged against."""
    from chemgen.datasets import curation_recipe
    from chemgen.data.store import curate

    curate(curation_recipe("mp20", data_dir=mp20_slice_dir), progress=False)


def test_crystal_screening_writes_ranked_candidates_and_report(tiny_model_dir, small_references, tmp_path,
                                                               novelty_reference):
    """Without a chemical system the model samples unconditionally: every decoded sample is a candidate."""
    from chemgen.flows.progress import read_progress
    from chemgen.flows.screen import crystal_screening

    result = crystal_screening(n=8, model=str(tiny_model_dir), relax_steps=5, references_path=str(small_references),
                               out_dir=str(tmp_path / "screen"), chunk=4, sigma=0.06, workers=2)
    table = pd.read_csv(tmp_path / "screen" / "candidates.csv")
    assert len(table) == result["n_candidates"] <= 8
    assert {"e_above_hull", "sun", "msun", "valid", "source", "found_by"} <= set(table.columns)
    assert set(table.source) <= {"adit"}
    assert (tmp_path / "screen" / "report.md").read_text().startswith("# Crystal screening: any (unconditional")
    assert (tmp_path / "screen" / "e_above_hull.png").read_bytes()[:4] == b"\x89PNG"
    metrics = result["metrics"]
    assert 0 <= metrics["chgnet_mp20/metastable_rate"] <= 1 and metrics["chgnet_mp20/sigma"] == 0.06
    assert metrics["source/adit/attempts"] == 8
    assert set(table.relax_status.dropna()) <= {"converged", "step_cap", "time_budget", "failed", "not relaxed"}
    # the hull and references were loaded by one task, before one relaxation task per batch of 4 valid candidates
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result["flow_run_id"]])))
    names = [r.name.rsplit("-", 1)[0] for r in runs]
    assert names.count("load-hull-and-references") == 1
    assert names.count("relax-and-hull") == -(-int(table.valid.sum()) // 4)
    assert {"space_group", "space_group_number", "cif", "space_group_before", "space_group_after"} <= set(table.columns)
    _assert_cifs_and_space_groups(table, tmp_path / "screen")
    assert read_progress(result["flow_run_id"]) == (
        1.0, f"done: {result['n_metastable_sun']} metastable S.U.N. of {result['n_candidates']}")


# CuNi, Li2Mn2O4, AlAu4, Ga4Te4 of the MP-20 test rows (`mp20_systems`)
REAL_CRYSTALS = (2, 5, 7, 0)


@pytest.fixture()
def real_crystals_generated(monkeypatch, mp20_systems):
    """ADiT's samples replaced by four real MP-20 crystals and a decoding failure: the tiny model's samples are
    seldom valid, and these give the table valid candidates of known systems."""
    from chemgen.samples import Failure
    from chemgen.screening import model_source

    picked = [mp20_systems[i] for i in REAL_CRYSTALS]
    assert [s.formula for s in picked] == ["CuNi", "Li2Mn2O4", "AlAu4", "Ga4Te4"]

    class Sampler:
        def generate(self, n, kind, seed=0, num_steps=None):
            return n

    monkeypatch.setattr("chemgen.models.loading.load_model", lambda reference: Sampler())
    monkeypatch.setattr("chemgen.samples.to_systems", lambda n, dataset: [*picked, Failure(len(picked), "no lattice")][:n])
    monkeypatch.setattr(model_source, "BATCH", 5)
    return picked


def test_a_chemical_system_keeps_only_the_models_samples_of_it(real_crystals_generated, small_references, tmp_path,
                                                               novelty_reference):
    """Li-Mn-O: of five samples only Li2Mn2O4 is a candidate; it is relaxed, has its CIF and space group before
    and after, and the report counts how many samples it cost."""
    from chemgen.flows.screen import crystal_screening

    result = crystal_screening(n=3, model="unused", relax_steps=5, references_path=str(small_references),
                               out_dir=str(tmp_path / "screen"), chunk=1, sigma=0.06, workers=2,
                               chemical_system="O-Mn-Li", sources="adit", max_samples=5)
    table = pd.read_csv(tmp_path / "screen" / "candidates.csv")
    assert table.formula.tolist() == ["LiMnO2"] and table.valid.all() and table.relax_status.notna().all()
    assert table.space_group_before.notna().all()
    _assert_cifs_and_space_groups(table, tmp_path / "screen")
    report = (tmp_path / "screen" / "report.md").read_text()
    assert report.startswith("# Crystal screening: Li-Mn-O")
    assert "1 of 5 samples in Li-Mn-O (5 samples per candidate" in report
    assert result["sources"]["adit"]["candidates"] == 1 and result["metrics"]["source/adit/attempts"] == 5
    runs = tracking.client().search_runs([tracking.experiment_id(tracking.DEFAULT_EXPERIMENT)],
                                         f"tags.`prefect.flow_run_id` = '{result['flow_run_id']}'")
    assert [r.data.params["chemical_system"] for r in runs] == ["Li-Mn-O"]


def test_a_chemical_system_the_model_never_samples_gives_an_empty_report(real_crystals_generated, small_references,
                                                                         tmp_path, novelty_reference):
    result = crystal_screening_he_ne(small_references, tmp_path)
    assert result["n_candidates"] == 0 and result["n_metastable_sun"] == 0
    assert "0 of 5 samples in He-Ne (none in the system" in (tmp_path / "screen" / "report.md").read_text()


def crystal_screening_he_ne(small_references, tmp_path):
    from chemgen.flows.screen import crystal_screening

    return crystal_screening(n=3, model="unused", relax_steps=5, references_path=str(small_references),
                             out_dir=str(tmp_path / "screen"), chunk=1, sigma=0.06, workers=2, chemical_system="He-Ne",
                             sources="adit", max_samples=5)


def _assert_cifs_and_space_groups(table: pd.DataFrame, out, generated: list | None = None) -> None:
    """Every valid candidate, and only those, has ``cifs/candidate-<index>.cif``, which reads back as that
    candidate (as generated where it was not relaxed); a space group given is a real one, symbol and number
    agreeing, and as spglib gives it for the CIF's structure."""
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pymatgen.symmetry.groups import SpaceGroup

    from chemgen import io as structure_io

    valid = table[table.valid.astype(bool)]
    assert (valid.cif == "cifs/candidate-" + valid["index"].astype(str) + ".cif").all()
    assert table[~table.valid].cif.isna().all() and table[~table.valid].space_group.isna().all()
    assert sorted(p.name for p in (out / "cifs").iterdir()) == sorted(f"candidate-{i}.cif" for i in valid["index"])
    for row in valid.itertuples():
        [system] = structure_io.read(out / row.cif)
        assert system.material_id == f"candidate-{row.index}" and system.num_atoms == row.num_atoms
        if generated is not None and pd.isna(row.relax_status):
            assert np.allclose(system.cell, generated[row.index].cell, atol=1e-4)
        if pd.notna(row.space_group):
            analyzer = SpacegroupAnalyzer(system.to_pymatgen(), symprec=0.1)
            assert (row.space_group, row.space_group_number) == (analyzer.get_space_group_symbol(),
                                                                 analyzer.get_space_group_number())
            assert SpaceGroup(row.space_group).int_number == row.space_group_number
    assert table.space_group.isna().equals(table.space_group_number.isna())


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
    from chemgen.registry.register import register

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

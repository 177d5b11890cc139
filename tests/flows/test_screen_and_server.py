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
    from chemgen.flows.progress import read_progress
    from chemgen.flows.screen import crystal_screening

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
    # for the web app: the new columns (the tiny model's 8 samples are seldom valid: the CIFs and space groups
    # are checked on real crystals below), and the run's progress
    assert {"in_chemical_system", "space_group", "space_group_number", "cif"} <= set(table.columns)
    assert table.in_chemical_system.all()  # no chemical system: every candidate is in
    _assert_cifs_and_space_groups(table, tmp_path / "screen")
    assert read_progress(result["flow_run_id"]) == (1.0, f"done: {result['n_metastable_sun']} metastable S.U.N. of 8")


# CuNi, Li2Mn2O4, AlAu4, Ga4Te4 of the MP-20 test rows (`mp20_systems`)
REAL_CRYSTALS = (2, 5, 7, 0)


@pytest.fixture()
def real_crystals_generated(monkeypatch, mp20_systems):
    """The flow's generator replaced by four real MP-20 crystals and a decoding failure: the tiny model's samples
    are seldom valid, and these give the table valid candidates, some relaxed, some not."""
    from prefect import task

    from chemgen.samples import Failure
    from chemgen.flows import screen

    picked = [mp20_systems[i] for i in REAL_CRYSTALS]
    assert [s.formula for s in picked] == ["CuNi", "Li2Mn2O4", "AlAu4", "Ga4Te4"]

    @task(name="generate-crystals")
    def generate(model: str, n: int, seed: int, num_steps: int | None) -> list:
        return [*picked, Failure(len(picked), "no lattice")]

    monkeypatch.setattr(screen, "generate", generate)
    return [*picked, None]


def _screen_real_crystals(out, references, chemical_system: str) -> tuple[dict, pd.DataFrame]:
    from chemgen.flows.screen import crystal_screening

    result = crystal_screening(n=5, model="unused", relax_steps=5, references_path=str(references),
                               out_dir=str(out), chunk=1, sigma=0.06, workers=2, chemical_system=chemical_system)
    return result, pd.read_csv(out / "candidates.csv").set_index("index", drop=False).sort_index()


def test_crystal_screening_relaxes_only_the_candidates_of_its_chemical_system(real_crystals_generated,
                                                                               small_references, tmp_path,
                                                                               novelty_reference):
    """Cu-Li-Mn-Ni-O: CuNi and Li2Mn2O4 are relaxed (one chunk each), AlAu4 and Ga4Te4 only reported; every valid
    one has its CIF (relaxed where it was) and space group."""
    from chemgen.flows.progress import read_progress

    result, table = _screen_real_crystals(tmp_path / "screen", small_references, "O-Mn-Li-Cu-Ni-O")
    assert table.in_chemical_system.tolist() == [True, True, False, False, False]
    assert table.valid[[0, 1]].all() and not table.valid[4]
    assert table.relax_status.notna().tolist() == (table.valid & table.in_chemical_system).tolist()
    assert not (table.metastable | table.msun)[~table.in_chemical_system].any()
    _assert_cifs_and_space_groups(table, tmp_path / "screen", generated=real_crystals_generated)
    assert table.space_group.notna().tolist() == table.valid.tolist()  # spglib finds every real crystal's group
    report = (tmp_path / "screen" / "report.md").read_text()
    assert "Chemical system: Cu-Li-Mn-Ni-O" in report.split("## Top candidates")[0]
    runs = tracking.client().search_runs([tracking.experiment_id(tracking.DEFAULT_EXPERIMENT)],
                                         f"tags.`prefect.flow_run_id` = '{result['flow_run_id']}'")
    assert [r.data.params["chemical_system"] for r in runs] == ["Cu-Li-Mn-Ni-O"]
    assert read_progress(result["flow_run_id"]) == (1.0, f"done: {result['n_metastable_sun']} metastable S.U.N. of 5")


def test_crystal_screening_in_a_chemical_system_no_candidate_is_made_of(real_crystals_generated, small_references,
                                                                        tmp_path, novelty_reference):
    """He-Ne: nothing is relaxed, nothing is in the system, and every candidate is still reported, with its CIF
    and space group as generated."""
    result, table = _screen_real_crystals(tmp_path / "screen", small_references, "He-Ne")
    assert len(table) == 5 and not table.in_chemical_system.any() and table.valid.sum() >= 2
    assert table.relax_status.isna().all() and table.e_above_hull.isna().all() and not table.msun.any()
    assert result["n_metastable_sun"] == 0 and result["metrics"]["chgnet_mp20/n_relaxed"] == 0
    _assert_cifs_and_space_groups(table, tmp_path / "screen", generated=real_crystals_generated)


def _assert_cifs_and_space_groups(table: pd.DataFrame, out, generated: list | None = None) -> None:
    """Every valid candidate, and only those, has ``cifs/candidate-<index>.cif``, which reads back as that
    candidate (as generated where it was not relaxed); a space group given is a real one, symbol and number
    agreeing, and as spglib gives it for the CIF's structure."""
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pymatgen.symmetry.groups import SpaceGroup

    from chemgen import io as structure_io

    valid = table[table.valid]
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

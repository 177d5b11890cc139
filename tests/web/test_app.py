"""The web app through an HTTP client: pages, upload checks, safe paths, and real jobs run by the runner.

Uploads are checked before a job exists, so the upload tests run with ``start_jobs=False`` (no runner); the
end-to-end tests start real runners (Prefect flow runs in their own processes) on the shipped DiffSpectra and
ADiT checkpoints with small settings.
"""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from chemgen.web import jobs
from chemgen.web.app import create_app
from chemgen.web.settings import WebSettings

from tests.web.conftest import ELUCIDATION, wait_finished


@pytest.fixture()
def settings(tmp_path) -> WebSettings:
    return WebSettings(home=tmp_path / "web", start_jobs=False, elucidation=dict(ELUCIDATION))


@pytest.fixture()
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def test_pages_render(client):
    for url, text in (("/", "Recent jobs"), ("/elucidate", 'name="raman"'), ("/screen", 'name="chemical_system"'),
                      ("/models", "Registered models"), ("/healthz", "true")):
        reply = client.get(url)
        assert reply.status_code == 200 and text in reply.text, url
    # the shipped checkpoints are always offered; nothing else is registered in this fresh store
    assert 'value="shipped"' in client.get("/elucidate").text
    assert client.get("/static/chemgen.js").status_code == 200


def test_3dmol_is_served_from_the_npm_package_not_a_cdn(client, settings):
    if settings.threedmol_js is None:
        pytest.fail("3Dmol.js not installed: `make install` runs npm ci (package-lock.json pins 3dmol)")
    reply = client.get("/vendor/3Dmol-min.js")
    assert reply.status_code == 200 and reply.content == settings.threedmol_js.read_bytes()
    assert "node_modules/3dmol/" in settings.threedmol_js.as_posix() and b"createViewer" in reply.content
    pages = "".join(client.get(u).text for u in ("/", "/elucidate", "/screen", "/models"))
    assert "http://" not in pages.replace("http://testserver", "") and "https://" not in pages


BAD_UPLOADS = [
    ({"ir": ("spectrum.csv", b"")}, 400, "spectrum.csv: empty file"),
    ({"ir": ("spectrum.csv", b"\x00\x01\x02 binary")}, 400, "spectrum.csv: binary file"),
    ({"ir": ("notes.pdf", b"%PDF-1.4")}, 415, "notes.pdf: unknown spectrum file type '.pdf'"),
    ({"ir": ("units.csv", b"x,y\n1000,1\n1100,2\n1200,1\n")}, 400, "units.csv: unknown"),
    ({"ir": ("range.csv", b"wavenumber (cm-1),absorbance\n10,0.1\n20,0.2\n30,0.1\n")}, 400, "range.csv"),
    ({}, 400, "no spectrum uploaded"),
]


@pytest.mark.parametrize(("files", "status", "message"), BAD_UPLOADS)
def test_a_bad_upload_gets_its_error_and_leaves_no_job(client, settings, files, status, message):
    reply = client.post("/api/elucidate", files=files)
    assert reply.status_code == status and message in reply.json()["error"], reply.text
    page = client.post("/elucidate", files=files)     # the form gets an error page saying the same
    assert page.status_code == status and "This upload cannot be used" in page.text
    assert list(settings.jobs_dir.iterdir()) == []    # no job, no staging folder left behind


def test_too_large_and_too_many_files_are_refused(settings, uploads):
    small = WebSettings(home=settings.home, start_jobs=False, max_upload_bytes=1_000)
    with TestClient(create_app(small)) as client:
        reply = client.post("/api/elucidate", files={"ir": ("big.jdx", uploads["ir"].read_bytes())})
        assert reply.status_code == 413 and "big.jdx: larger than" in reply.json()["error"]
        assert client.post("/api/elucidate", files=[("ir", ("a.jdx", b"1")), ("raman", ("b.jdx", b"1")),
                                                    ("ir", ("c.jdx", b"1"))]).status_code == 400
    assert list(settings.jobs_dir.iterdir()) == []


def test_a_bad_formula_or_model_is_refused(client, uploads):
    files = {"ir": ("q.jdx", uploads["ir"].read_bytes())}
    reply = client.post("/api/elucidate", files=files, data={"formula": "C2Cl4"})
    assert reply.status_code == 400 and "Cl" in reply.json()["error"]
    reply = client.post("/api/elucidate", files=files, data={"model": "/etc/passwd"})
    assert reply.status_code == 400 and "unknown model" in reply.json()["error"]


def test_a_good_upload_is_stored_under_a_server_name(client, settings, uploads):
    files = {"ir": ("../../../tmp/evil name.jdx", uploads["ir"].read_bytes()),
             "raman": ("query.raman.jdx", uploads["raman"].read_bytes())}
    reply = client.post("/elucidate", files=files, data={"formula": "C8H12"}, follow_redirects=False)
    assert reply.status_code == 303
    job_id = reply.headers["location"].rsplit("/", 1)[1]
    folder = jobs.job_dir(settings.jobs_dir, job_id)
    record = jobs.read_json(folder / "job.json")
    assert [u["name"] for u in record["uploads"]] == ["evil name.jdx", "query.raman.jdx"]
    assert sorted(p.name for p in (folder / "uploads").iterdir()) == ["file-1.jdx", "file-2.jdx"]
    assert record["params"]["formula"] == "C8H12" and record["params"]["samples"] == ELUCIDATION["samples"]
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "submitted" in page.text and "evil name.jdx" in page.text
    assert client.get(f"/api/jobs/{job_id}").json()["state"] == "submitted"


@pytest.mark.parametrize("url", ["/jobs/..%2F..%2Fetc", "/jobs/0123", "/jobs/" + "0" * 32, "/api/jobs/nothing"])
def test_unknown_jobs_are_404(client, url):
    assert client.get(url).status_code == 404


def test_job_files_stay_inside_the_job(client, settings, uploads):
    reply = client.post("/api/elucidate", files={"ir": ("q.jdx", uploads["ir"].read_bytes())})
    job_id = reply.json()["job"]
    folder = jobs.job_dir(settings.jobs_dir, job_id)
    (folder / "out").mkdir()
    (folder / "out" / "candidates.csv").write_text("rank\n1\n")
    (folder / "out" / ".hidden").write_text("x")
    assert client.get(f"/jobs/{job_id}/files/candidates.csv").text == "rank\n1\n"
    for bad in ("..%2Fjob.json", "../job.json", ".hidden", "%2Fetc%2Fpasswd", "uploads/file-1.jdx"):
        assert client.get(f"/jobs/{job_id}/files/{bad}").status_code == 404, bad


def test_screening_form_checks_its_values(client, settings):
    for data, message in (({"n": "0"}, "1 to"), ({"n": "ten"}, "whole number"),
                          ({"n": "4", "chemical_system": "Li-Xx"}, "Xx"), ({"model": "../weights"}, "unknown model")):
        reply = client.post("/api/screen", data=data)
        assert reply.status_code == 400 and message in reply.json()["error"], (data, reply.text)
    reply = client.post("/api/screen", data={"n": "4", "chemical_system": "O-Li", "model": "shipped"})
    assert reply.status_code == 202
    record = jobs.read_json(jobs.job_dir(settings.jobs_dir, reply.json()["job"]) / "job.json")
    assert record["params"]["n"] == 4 and record["params"]["chemical_system"] == "O-Li"
    assert record["params"]["model"].endswith("adit-gpu-quick")


@pytest.mark.slow
def test_an_elucidation_job_runs_as_a_prefect_flow_and_survives_a_server_restart(tmp_path, uploads):
    settings = WebSettings(home=tmp_path / "web", elucidation=dict(ELUCIDATION))
    with TestClient(create_app(settings)) as client:
        files = {"ir": ("q.ir.jdx", uploads["ir"].read_bytes()), "raman": ("q.raman.jdx", uploads["raman"].read_bytes())}
        # the shipped checkpoint, by name: the default is the registry's first DiffSpectra alias, if any
        job_id = client.post("/api/elucidate", files=files, data={"model": "shipped"}).json()["job"]
        assert client.get(f"/api/jobs/{job_id}").json()["state"] in ("queued", "running", "submitted")
    # a new server (the old one is gone) follows the same job: nothing was held in memory
    with TestClient(create_app(settings)) as client:
        state = wait_finished(client, job_id)
        assert state["state"] == "completed", (state, (settings.jobs_dir / job_id / "runner.log").read_text()[-3000:])
        assert state["flow_run_id"]
        page = client.get(f"/jobs/{job_id}").text
        assert "5 candidates from 13 valid of 24 samples" in page
        folder = jobs.job_dir(settings.jobs_dir, job_id)
        result = jobs.read_json(folder / "result.json")
        assert result["queries"][0]["status"] == "done"
        csv_text = client.get(f"/jobs/{job_id}/files/out/query/candidates.csv").text
        assert csv_text.startswith("rank,smiles,inchikey")
        assert client.get(f"/jobs/{job_id}/files/out/query/candidates.sdf").status_code == 200
        rows = csv_text.strip().splitlines()[1:]
        assert len(rows) == 5 and page.count('class="candidate"') == 5   # top-k of 13 valid samples
        # each candidate: a depiction, its overlay plot and its 3D structure for the viewer
        assert page.count("<svg") >= 5 and "candidate-01.png" in page and page.count("M  END") == 5
        assert client.get(f"/jobs/{job_id}/files/out/query/candidate-01.png").content[:4] == b"\x89PNG"
        # the flow run is in Prefect's store, completed
        found = jobs.prefect_flow_run(state["flow_run_id"], wait=120)
        assert found is not None and found[0] == "Completed"

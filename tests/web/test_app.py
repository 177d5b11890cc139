"""The web app through an HTTP client: pages, upload checks, safe paths, and real jobs run by the runner.

Uploads are checked before a job exists, so these tests run with ``start_jobs=False`` (no runner); jobs run
end to end by real runners (Prefect flow runs in their own processes) in test_browser.py and test_serve_cli.py.
"""

from __future__ import annotations


import pytest
from fastapi.testclient import TestClient

from chemgen.web import jobs
from chemgen.web.app import create_app
from chemgen.web.settings import WebSettings

from tests.web.conftest import ELUCIDATION


@pytest.fixture()
def settings(tmp_path) -> WebSettings:
    return WebSettings(home=tmp_path / "web", start_jobs=False, elucidation=dict(ELUCIDATION))


@pytest.fixture()
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def csrf(client) -> str:
    """The CSRF token the pages set (a form carries it back)."""
    client.get("/elucidate")
    return client.cookies["chemgen_csrf"]


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
    page = client.post("/elucidate", files=files, data={"csrf_token": csrf(client)})   # the form: an error page
    assert page.status_code == status and "This upload cannot be used" in page.text
    assert list(settings.jobs_dir.iterdir()) == []    # no job, no staging folder left behind


def test_too_large_and_too_many_files_are_refused(settings, uploads):
    small = WebSettings(home=settings.home, start_jobs=False, max_upload_bytes=1_000)
    with TestClient(create_app(small)) as client:
        reply = client.post("/api/elucidate", files={"ir": ("big.jdx", uploads["ir"].read_bytes())})
        assert reply.status_code == 413 and "big.jdx: larger than" in reply.json()["error"]
        reply = client.post("/api/elucidate", files=[("ir", ("a.jdx", b"1")), ("raman", ("b.jdx", b"1")),
                                                     ("candidates", ("c.smi", b"C")), ("ir", ("d.jdx", b"1"))])
        assert reply.status_code == 400 and "Too many files" in reply.json()["error"], reply.text
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
    reply = client.post("/elucidate", files=files, data={"formula": "C8H12", "csrf_token": csrf(client)},
                        follow_redirects=False)
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


BAD_CANDIDATES = [
    (("cands.pdf", b"%PDF-1.4"), {}, 415, "cands.pdf: unknown candidates file type '.pdf'"),
    (("cands.smi", b"# only a comment\n"), {}, 400, "cands.smi: no molecules given"),
    (("cands.smi", b"C\nCC\nCCC\n"), {}, 400, "cands.smi: 3 molecules; at most 2 per call"),
    (("cands.smi", b"CCO\n"), {"sources": ["library"]}, 400, "'your own libraries' is not ticked"),
]


@pytest.mark.parametrize(("upload", "data", "status", "message"), BAD_CANDIDATES)
def test_a_bad_candidates_file_gets_its_error_and_leaves_no_job(settings, uploads, upload, data, status, message):
    small = WebSettings(home=settings.home, start_jobs=False, max_user_candidates=2)
    with TestClient(create_app(small)) as client:
        reply = client.post("/api/elucidate", files={"ir": ("q.jdx", uploads["ir"].read_bytes()),
                                                     "candidates": upload}, data=data)
        assert reply.status_code == status and message in reply.json()["error"], reply.text
    assert list(settings.jobs_dir.iterdir()) == []


def test_a_candidates_file_is_computed_in_the_job_and_its_molecule_found_with_each_bad_line_explained(
        client, settings, uploads):
    """End to end through the runner (a real Prefect flow run, in this process): the chemist's candidates,
    GFN2-xTB spectra computed in the job, searched alone; the query's molecule (GDB 19566) is among them."""
    from chemgen.web.runner import run_job

    from tests.web.conftest import QUERY_INCHIKEY

    smiles = b"C1CC11C2CC1CC2 the_answer\nCCO ethanol\n[Na+].[Cl-] salt\nnot-a-molecule typo\n"
    reply = client.post("/api/elucidate", files={"ir": ("q.ir.jdx", uploads["ir"].read_bytes()),
                                                 "raman": ("q.raman.jdx", uploads["raman"].read_bytes()),
                                                 "candidates": ("mine.smi", smiles)}, data={"sources": ["user"]})
    assert reply.status_code == 202, reply.text
    folder = jobs.job_dir(settings.jobs_dir, reply.json()["job"])
    assert run_job(folder) == 0, (folder / "error.json").read_text() if (folder / "error.json").exists() else ""
    result = jobs.read_json(folder / "result.json")
    assert result["candidates"]["computed"] == 2 and result["candidates"]["failed"] == 2
    summary = jobs.read_json(folder / "out" / "query" / "query.json")
    assert [s["source"] for s in summary["sources"] if s["searched"]] == ["user:candidates"]
    first = summary["candidates"][0]
    assert first["inchikey"] == QUERY_INCHIKEY and first["sources"] == ["user:candidates"]
    assert first["similarity"] > 0.85 and len(summary["candidates"]) == 2
    page = client.get(f"/jobs/{folder.name}").text
    assert "Your candidates: 2 computed, 2 could not be" in page
    assert "several fragments" in page and "RDKit cannot parse" in page
    lines = client.get(f"/jobs/{folder.name}/files/out/candidates/lines.csv").text.splitlines()
    assert lines[0] == "line,name,smiles,inchikey,status" and len(lines) == 5


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
    for data, message in (({"n": "4", "sources": ["random"]}, "need a chemical system"),
                          ({"n": "4", "chemical_system": "Li-Mn-O", "sources": ["dft"]}, "unknown source"),
                          ({"n": "4", "chemical_system": "Li-Mn-O", "formula": "LiFeO2"}, "not of the system")):
        reply = client.post("/api/screen", data=data)
        assert reply.status_code == 400 and message in reply.json()["error"], (data, reply.text)
    reply = client.post("/api/screen", data={"n": "4", "chemical_system": "O-Li", "model": "shipped",
                                             "sources": ["adit", "random"]})
    assert reply.status_code == 202
    record = jobs.read_json(jobs.job_dir(settings.jobs_dir, reply.json()["job"]) / "job.json")
    assert record["params"]["n"] == 4 and record["params"]["chemical_system"] == "O-Li"
    assert record["params"]["model"].endswith("adit-gpu-quick") and record["params"]["sources"] == ["adit", "random"]


def test_uploaded_structures_are_checked_before_the_job_exists(client, settings, tmp_path):
    """A partially occupied CIF is refused with the file's name and the problem; a good one joins the job."""
    from tests.web.test_browser import _mp20_test_cif

    cif = _mp20_test_cif("mp-1002572")
    before = sorted(p.name for p in settings.jobs_dir.iterdir()) if settings.jobs_dir.is_dir() else []
    partial = cif.replace("0.25010000  1\n", "0.25010000  0.5\n")
    reply = client.post("/api/screen", data={"n": "2", "chemical_system": "Li-Mn-O", "sources": ["random"]},
                        files={"structures": ("ours.cif", partial.encode())})
    assert reply.status_code == 400 and "ours.cif" in reply.json()["error"], reply.text
    assert "partial occupancy" in reply.json()["error"] or "disordered" in reply.json()["error"]
    after = sorted(p.name for p in settings.jobs_dir.iterdir()) if settings.jobs_dir.is_dir() else []
    assert [name for name in after if not name.startswith(".")] == [n for n in before if not n.startswith(".")]
    reply = client.post("/api/screen", data={"n": "2", "chemical_system": "Li-Mn-O", "sources": ["random"]},
                        files={"structures": ("ours.cif", cif.encode())})
    assert reply.status_code == 202, reply.text
    record = jobs.read_json(jobs.job_dir(settings.jobs_dir, reply.json()["job"]) / "job.json")
    assert record["params"]["uploads"] == ["uploads/structures.cif"] and "1 of yours (ours.cif)" in record["label"]


def test_pages_polling_one_flow_run_share_one_prefect_read(monkeypatch):
    """Polls faster than Prefect answers must not queue reads without bound: one read per run in flight."""
    import threading
    import time

    calls = []

    def slow_read(flow_run_id):
        calls.append(flow_run_id)
        time.sleep(0.5)
        return ("Running", 0.5, "half way")

    monkeypatch.setattr(jobs, "_read_flow_run", slow_read)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(jobs.prefect_flow_run("run-a", wait=5)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["run-a"] and answers == [("Running", 0.5, "half way")] * 8
    assert jobs.prefect_flow_run("run-a", wait=0.01) is None   # a new read, not answered in time: no state


def test_the_default_model_is_a_champion_and_the_shipped_checkpoint_comes_last(monkeypatch):
    from chemgen.web import registry

    aliases = [("chemgen-adit-demo", "champion", 2), ("chemgen-adit-demo", "challenger", 1),
               ("chemgen-adit", "challenger", 5), ("chemgen-adit", "champion", 4), ("chemgen-gfmdiff", "champion", 1)]
    monkeypatch.setattr(registry, "_registered_aliases", lambda: aliases)
    assert list(registry.job_models("screening")) == [
        "models:/chemgen-adit@champion", "models:/chemgen-adit-demo@champion", "models:/chemgen-adit@challenger",
        "models:/chemgen-adit-demo@challenger", "shipped"]


def test_the_openapi_schema_describes_the_api(client):
    schema = client.get("/openapi.json").json()
    submit = schema["paths"]["/api/elucidate"]["post"]
    form = submit["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"ir", "raman", "formula", "sources", "candidates", "model", "csrf_token"} <= set(form)
    assert form["ir"]["format"] == "binary"
    assert submit["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobSubmitted")
    assert {"400", "401", "403", "413", "415", "429"} <= set(submit["responses"])
    status = schema["paths"]["/api/jobs/{job_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert status["schema"]["$ref"].endswith("/JobStatus")
    assert {"state", "progress", "flow_run_id", "job"} <= set(schema["components"]["schemas"]["JobStatus"]["properties"])
    assert "chemical_system" in schema["paths"]["/api/screen"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]


def test_retention_deletes_old_finished_jobs_with_their_files_and_keeps_the_rest(settings, uploads):
    import time as clock

    with TestClient(create_app(settings)) as client:
        ids = [client.post("/api/elucidate", files={"ir": (f"q{i}.jdx", uploads["ir"].read_bytes())}).json()["job"]
               for i in range(3)]
    folders = [jobs.job_dir(settings.jobs_dir, i) for i in ids]
    jobs.write_json(folders[0] / "result.json", {"queries": []})        # finished long ago: goes
    jobs.write_json(folders[1] / "error.json", {"error": "bad"})        # failed long ago: goes
    (folders[0] / "out").mkdir()
    (folders[0] / "out" / "candidates.csv").write_text("rank\n")
    # the third was never run (submitted): kept whatever its age
    later = clock.time() + 8 * 86400
    assert sorted(jobs.expire_jobs(settings.jobs_dir, 7, now=later)) == sorted(ids[:2])
    assert [p.name for p in settings.jobs_dir.iterdir()] == [ids[2]]
    assert jobs.expire_jobs(settings.jobs_dir, 7) == []                  # nothing old enough now
    with pytest.raises(Exception, match="retention_days"):
        WebSettings(retention_days=0)


def test_a_completed_job_whose_query_failed_shows_the_error(client, settings, uploads):
    job_id = client.post("/api/elucidate", files={"ir": ("q.jdx", uploads["ir"].read_bytes())}).json()["job"]
    folder = jobs.job_dir(settings.jobs_dir, job_id)
    jobs.write_json(folder / "result.json", {"queries": [{"name": "query", "status": "failed", "out_dir": "x/query",
                                                         "error": "no libraries of your own"}]})
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "no libraries of your own" in page.text

"""The web app in a real browser (headless Chromium from Debian's chromium and chromium-driver, which .ci/run
installs): upload a spectrum and wait for the candidates; start a crystal screening and open its result. Each
test saves a screenshot (into $CHEMGEN_SCREENSHOTS when set: how the README's pictures are made)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pandas as pd
import pytest

from chemgen.web import jobs
from chemgen.web.settings import WebSettings
from tests.web.conftest import ELUCIDATION, QUERY_INCHIKEY, live_server, wait_finished

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
JOB_SECONDS = 900

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("headless Chromium not installed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # no network beyond 127.0.0.1 here: Chromium's own background connections would only fail and retry
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1400,1000", "--enable-unsafe-swiftshader",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(1000, height), 2400))   # the whole page, as a reader scrolls it
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    assert path.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("CHEMGEN_SCREENSHOTS"):
        target = Path(os.environ["CHEMGEN_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


def follow_to_the_end(driver, base: str, job_url: str) -> dict:
    """Wait for the job through the API (the page polls the same), then let the page show the result."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with httpx.Client(base_url=base, timeout=30) as api:
        state = wait_finished(api, job_url.rsplit("/", 1)[1], JOB_SECONDS)
    # the page reloads itself when the job ends; a fresh load makes the wait certain
    driver.get(job_url)
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#status[data-finished=true]")))
    return state


def test_a_chemist_uploads_spectra_and_gets_ranked_candidates_across_a_server_restart(browser, tmp_path, uploads):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    settings = WebSettings(home=tmp_path / "web", elucidation=dict(ELUCIDATION))
    with live_server(settings) as base:
        browser.get(f"{base}/elucidate")
        browser.find_element(By.NAME, "ir").send_keys(str(uploads["ir"]))
        browser.find_element(By.NAME, "raman").send_keys(str(uploads["raman"]))
        # the shipped checkpoint, by name: the default is the registry's first DiffSpectra alias, if any
        Select(browser.find_element(By.NAME, "model")).select_by_value("shipped")
        browser.find_element(By.CSS_SELECTOR, "#elucidate-form button[type=submit]").click()
        WebDriverWait(browser, 120).until(ec.url_contains("/jobs/"))
        assert browser.find_element(By.ID, "state").text in ("submitted", "queued", "running")
        job_id = browser.current_url.rsplit("/", 1)[1]
    # the server stops while the job runs; a new one (another port) follows it: nothing was held in memory
    with live_server(settings) as base:
        state = follow_to_the_end(browser, base, f"{base}/jobs/{job_id}")
        assert state["state"] == "completed", (state, (settings.jobs_dir / job_id / "runner.log").read_text()[-3000:])
        found = jobs.prefect_flow_run(state["flow_run_id"], wait=120)   # a Prefect flow run, completed
        assert found is not None and found[0] == "Completed"
        summary = browser.find_element(By.ID, "summary").text
        assert "5 candidates; DiffSpectra: 13 valid of 24 samples" in summary and "SDF" in summary
        searched = browser.find_element(By.ID, "sources").text
        assert "searched library" in searched and "searched model" in searched
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.candidate")
        assert len(rows) == 5 and all(r.find_elements(By.TAG_NAME, "svg") for r in rows)   # RDKit depictions
        # the uploaded spectra are a library molecule's: the library's search lists it first, and says it is sure
        assert QUERY_INCHIKEY in rows[0].text and rows[0].find_element(By.CLASS_NAME, "source").text == "library:qm9-xtb"
        assert browser.find_element(By.ID, "confidence").get_attribute("class") == "confident"
        # the 3D panel shows the first candidate, drawn by 3Dmol.js (served by the app); another on a click
        assert browser.find_elements(By.CSS_SELECTOR, "#viewer3d canvas")
        assert browser.find_element(By.ID, "viewer3d").get_attribute("data-shown") == "candidate 1"
        browser.find_elements(By.CSS_SELECTOR, "button.show3d")[2].click()
        assert browser.find_element(By.ID, "viewer3d").get_attribute("data-shown") == "candidate 3"
        assert browser.execute_script("return document.querySelector('tr.overlay img').naturalWidth") > 0
        # the downloads: the ranking as CSV, the candidates in 3D as SDF
        with httpx.Client(base_url=base) as http:
            csv_rows = http.get(f"/jobs/{job_id}/files/out/query/candidates.csv").text.strip().splitlines()
            assert csv_rows[0].startswith("rank,smiles,inchikey") and len(csv_rows) == 6
            assert http.get(f"/jobs/{job_id}/files/out/query/candidates.sdf").text.count("M  END") == 5
        screenshot(browser, tmp_path, "elucidation")


def test_a_screening_team_starts_a_screen_and_browses_its_candidates(browser, tmp_path, mp20_slice_dir,
                                                                       small_references):
    """Li-Mn-O from random symmetric structures and the team's own CIF: the page compares the two sources and
    lists the pooled candidates, sortable and filterable, each with its CIF."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from chemgen.datasets import curation_recipe
    from chemgen.data.store import curate

    curate(curation_recipe("mp20", data_dir=mp20_slice_dir), progress=False)  # the novelty reference
    ours = tmp_path / "ours.cif"
    ours.write_text(_mp20_test_cif("mp-1002572"))   # LiMnO2
    screening = {"relax_steps": 5, "references_path": str(small_references), "sigma": 0.06, "chunk": 4,
                 "workers": 1}
    settings = WebSettings(home=tmp_path / "web", screening=screening)
    with live_server(settings) as base:
        browser.get(f"{base}/screen")
        browser.find_element(By.NAME, "chemical_system").send_keys("Li-Mn-O")
        for source in ("substitution", "adit"):   # random structures and ours only: no prototypes, no sampling here
            browser.find_element(By.CSS_SELECTOR, f"input[name=sources][value={source}]").click()
        count = browser.find_element(By.NAME, "n")
        count.clear()
        count.send_keys("5")
        browser.find_element(By.NAME, "structures").send_keys(str(ours))
        browser.find_element(By.CSS_SELECTOR, "#screen-form button[type=submit]").click()
        WebDriverWait(browser, 120).until(ec.url_contains("/jobs/"))
        state = follow_to_the_end(browser, base, browser.current_url)
        assert state["state"] == "completed", state
        rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
        assert len(rows) == 6
        compared = browser.find_element(By.ID, "sources").text
        assert "random 5" in compared and "upload 1" in compared
        assert "chgnet_mp20/metastable_rate" in browser.page_source   # the full table, folded
        # sorting by E_hull puts the lowest first; the filter hides what does not match
        header = browser.find_elements(By.CSS_SELECTOR, "#candidates thead th")[4]
        header.click()
        energies = [r.find_elements(By.TAG_NAME, "td")[4].text for r in browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")]
        numbers = [float(e) for e in energies if e]
        assert numbers == sorted(numbers) and len(numbers) == 6
        browser.find_element(By.ID, "filter").send_keys("upload")
        assert browser.find_element(By.ID, "shown").text.startswith("1 of 6") or \
            browser.find_element(By.ID, "shown").text.startswith("2 of 6")   # a random one may match ours
        browser.find_element(By.ID, "filter").clear()
        browser.find_element(By.ID, "filter").send_keys(" ")  # an input event after clear
        cifs = browser.find_elements(By.CSS_SELECTOR, "#candidates a[href$='.cif']")
        assert len(cifs) == 6
        with httpx.Client() as http:
            assert "_cell_length_a" in http.get(cifs[0].get_attribute("href")).text
        assert browser.find_elements(By.CSS_SELECTOR, "#viewer3d canvas")
        screenshot(browser, tmp_path, "screening")


def _mp20_test_cif(material_id: str) -> str:
    from tests.conftest import MP20_DIR

    frame = pd.read_csv(MP20_DIR / "test.csv.gz")
    return frame[frame.material_id == material_id].cif.iloc[0]


def test_the_models_page_shows_versions_aliases_and_gate_decisions(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from chemgen import gates, tracking

    # two versions of a model in the registry, the second promoted by the gate (as the nightly flow records it)
    name = "chemgen-adit-web-test"
    client = tracking.client()
    client.create_registered_model(name, description="ADiT, registered by the web test")
    for version, valid in ((1, 0.80), (2, 0.86)):
        client.create_model_version(name, str(tmp_path), run_id=None)
        metrics = {"molecule/edm/validity": valid, "molecule/edm/atom_stability": 0.95, "crystal/cdvae/valid": valid}
        assert gates.evaluate_and_promote(name, version, gates.Evaluation(metrics, 1000, {})).promote
    settings = WebSettings(home=tmp_path / "web", start_jobs=False, mlflow_ui_url="http://127.0.0.1:5000")
    with live_server(settings) as base:
        browser.get(f"{base}/models")
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#models tbody tr") if name in r.text)
        assert row.find_elements(By.TAG_NAME, "td")[2].text == "2"      # the champion
        browser.get(f"{base}/models/{name}")
        rows = browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["2", "1"]
        assert "champion" in rows[0].text and "promoted" in rows[0].text and "molecule/edm/validity = 0.8600" in rows[0].text
        link = browser.find_element(By.LINK_TEXT, "Open in the MLflow UI").get_attribute("href")
        assert link == f"http://127.0.0.1:5000/#/models/{name}"
        screenshot(browser, tmp_path, "models")

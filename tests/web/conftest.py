"""Helpers of the web tests: spectra to upload, a live server on 127.0.0.1, waiting for a job."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from fastapi.testclient import TestClient

from chemgen.spectra.broadening import GRID_CM1, broaden
from chemgen.spectra.files import Spectrum, write_jcamp
from chemgen.web.app import create_app
from chemgen.web.settings import WebSettings

# A held-out test molecule of the committed spectra store (C1CC11C2CC1CC2, GDB 19566) for which the shipped
# DiffSpectra samples valid molecules: 13 of 24 at 100 steps with seed 0 (not the query's own: the model is
# early, its model card says). About 45 s on one core.
QUERY_MOLECULE = 19566
QUERY_INCHIKEY = "STKNKCCLDSHLQB-UHFFFAOYSA-N"   # RDKit's, of the store's SMILES C1CC11C2CC1CC2
SPECTRA_STORE = Path(__file__).resolve().parents[2] / "datasets" / "spectra" / "qm9-xtb"
ELUCIDATION = {"samples": 24, "steps": 100, "top_k": 5, "rerank": False, "seed": 0}
Y_UNITS = {"ir": "KM/MOL PER CM-1", "raman": "A^4/AMU PER CM-1"}


def spectrum_files(folder: Path, qm9_index: int = QUERY_MOLECULE, store: Path = SPECTRA_STORE) -> dict[str, Path]:
    """JCAMP-DX files of a store molecule's broadened IR and Raman spectra, as `chemgen spectra compute` writes."""
    shards = ds.dataset(sorted(store.glob("shard-*.parquet")), format="parquet")
    row = shards.to_table(filter=ds.field("qm9_index") == qm9_index).to_pylist()[0]
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, sticks in (("ir", row["ir_km_mol"]), ("raman", row["raman_a4_amu"])):
        spectrum = Spectrum(GRID_CM1, broaden(row["frequencies_cm1"], sticks, kind), kind, "intensity",
                            title=row["smiles"])
        files[kind] = write_jcamp(folder / f"gdb{qm9_index}.{kind}.jdx", spectrum, y_units=Y_UNITS[kind])
    return files


@pytest.fixture()
def uploads(tmp_path) -> dict[str, Path]:
    return spectrum_files(tmp_path / "uploads")


def wait_finished(client: TestClient, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["state"] in ("completed", "failed", "crashed"):
            return state
        time.sleep(2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {state}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(settings: WebSettings) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 in a thread (what `chemgen serve` runs); yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the web server did not start")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)

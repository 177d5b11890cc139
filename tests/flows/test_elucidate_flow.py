"""The ``elucidate`` flow on an ephemeral Prefect API: a batch with a good and bad queries; the good one writes
its candidates, the bad ones are reported with their errors, and nothing of the good one is lost."""

from __future__ import annotations

import json

import pytest
import torch

from chemgen.training import tracked as jobs
from chemgen.spectra.broadening import GRID_CM1, broaden
from chemgen.spectra.files import Spectrum, write_jcamp
from chemgen.spectra.shards import read_table
from chemgen.flows.elucidate import elucidate_batch
from chemgen.flows.progress import read_progress


@pytest.fixture(scope="module")
def lineage_dir(tmp_path_factory, small_spectra_store):
    """A tiny DiffSpectra trained for a few steps through `jobs.train` on the small spectra store."""
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHEMGEN_SPECTRA_DIR", str(small_spectra_store))
        outcome = jobs.train("diffspectra", "tiny", tmp_path_factory.mktemp("run"), steps={"denoiser": 2},
                             tokens_per_batch=64, progress=False, device="cpu")
    return outcome.model_dir


@pytest.fixture()
def acetylene_files(small_spectra_store, tmp_path):
    row = next(r for r in read_table(small_spectra_store / "qm9-xtb", only_ok=True).to_pylist() if r["smiles"] == "C#C")
    files = []
    for kind, sticks, units in (("ir", row["ir_km_mol"], "KM/MOL PER CM-1"),
                                ("raman", row["raman_a4_amu"], "A^4/AMU PER CM-1")):
        spectrum = Spectrum(GRID_CM1, broaden(row["frequencies_cm1"], sticks, kind), kind, "intensity")
        files.append(str(write_jcamp(tmp_path / f"acetylene.{kind}.jdx", spectrum, y_units=units)))
    return files


def test_the_good_query_completes_and_the_bad_ones_report_their_errors(lineage_dir, acetylene_files, tmp_path):
    empty = tmp_path / "broken.ir.csv"
    empty.write_text("")
    out = tmp_path / "batch"
    result = elucidate_batch(queries=[{"files": [str(empty), acetylene_files[1]], "name": "broken"},
                                      {"files": acetylene_files, "formula": "C2H2"},
                                      {"name": "nothing"},
                                      {"files": [acetylene_files[0]], "formula": "C2H2Cl"}],
                             model=str(lineage_dir), out_dir=str(out), samples=6, steps=2, rerank=False)
    by_name = {q["name"]: q for q in result["queries"]}
    assert list(by_name) == ["broken", "acetylene", "nothing", "acetylene_2"]
    good = by_name["acetylene"]
    assert good["status"] == "done" and good["error"] is None and good["num_samples"] == 6
    summary = json.loads((out / "acetylene" / "query.json").read_text())
    assert summary["formula"] == "C2H2" and summary["num_samples"] == 6 and summary["model"] == str(lineage_dir)
    assert (out / "acetylene" / "candidates.csv").is_file() and (out / "acetylene" / "candidates.sdf").is_file()
    assert good["candidates"] == len(summary["candidates"])
    assert good["top"] == (summary["candidates"][0] if summary["candidates"] else None)
    # the bad ones: their errors, naming the file or the problem; no folder of theirs
    assert by_name["broken"]["status"] == "failed" and by_name["broken"]["error"] == f"{empty}: empty file"
    assert by_name["nothing"]["error"] == "query 3: 'files' must be a non-empty list of file names"
    assert "DiffSpectra's molecules are made of H, C, N, O, F" in by_name["acetylene_2"]["error"]
    assert not (out / "broken").exists() and not (out / "acetylene_2").exists()
    assert result["failed"] == ["broken", "nothing", "acetylene_2"]
    assert json.loads((out / "batch.json").read_text()) == json.loads(json.dumps(result))
    # the run's progress artifact, for the web app: done once batch.json is written
    assert read_progress(result["flow_run_id"]) == (1.0, "done: 1 of 4 queries elucidated")

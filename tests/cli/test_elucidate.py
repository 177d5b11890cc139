"""`chemgen elucidate` and DiffSpectra through the shared stack: a tiny DiffSpectra trained by `chemgen train
diffspectra` on real molecules of the spectra store (its pack builder, the lineage, MLflow, the registry
pyfunc), then elucidation from JCAMP-DX files of a real molecule's computed spectra, re-ranking by xTB on
small molecules, and the errors of bad uploads.

The tiny model is trained for seconds, so its samples are rarely molecules; the tests check what the command
makes of whatever it samples (the uploaded spectra reach the model on its grid, the files hold the ranking of
exactly those samples) rather than their chemistry, and one test replaces the sampler by fixed real molecules
to check the candidate table, the xTB re-ranking and the overlays. Overfitting the tiny model on acetylene
until it regenerates the molecule was measured: about 1,500 denoiser steps (4 minutes on this machine's
shared cores) make C#C the most frequent valid sample; 400 steps (a minute) do so in some runs only (training
is not bit-reproducible across runs); too slow and too fragile for a test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import Chem
from typer.testing import CliRunner

from chemgen import tracking
from chemgen.cli.app import app
from chemgen.elucidation import rank_candidates
from chemgen.models import loading
from chemgen import lineage
from chemgen.models.diffspectra.data import perceive_graph
from chemgen.models.diffspectra.model import DiffSpectra
from chemgen.spectra.broadening import GRID_CM1, broaden
from chemgen.spectra.files import Spectrum, write_jcamp
from chemgen.spectra.shards import read_table

runner = CliRunner()
REGISTERED = "chemgen-diffspectra-test"
ACETYLENE, CYANOACETYLENE = 4, 24   # GDB indices in the small store (tests/conftest.py)
Y_UNITS = {"ir": "KM/MOL PER CM-1", "raman": "A^4/AMU PER CM-1"}   # as `chemgen spectra compute` writes them


def store_row(store: Path, qm9_index: int) -> dict:
    rows = read_table(store / "qm9-xtb", only_ok=True).to_pylist()
    return next(r for r in rows if r["qm9_index"] == qm9_index)


def write_query(folder: Path, store: Path, qm9_index: int, kinds=("ir", "raman")) -> tuple[list[Path], dict]:
    """JCAMP-DX files of a store molecule's broadened spectra (as `chemgen spectra compute` writes them), and
    the spectra themselves."""
    row = store_row(store, qm9_index)
    folder.mkdir(parents=True, exist_ok=True)
    paths, spectra = [], {}
    for kind in kinds:
        sticks = row["ir_km_mol"] if kind == "ir" else row["raman_a4_amu"]
        spectra[kind] = broaden(row["frequencies_cm1"], sticks, kind)
        paths.append(write_jcamp(folder / f"gdb{qm9_index}.{kind}.jdx",
                                 Spectrum(GRID_CM1, spectra[kind], kind, "intensity", title=row["smiles"]),
                                 y_units=Y_UNITS[kind]))
    return paths, spectra


def sample_mol(store: Path, qm9_index: int) -> Chem.Mol:
    """A 3D molecule as DiffSpectra's samples are (explicit hydrogens, a conformer): the store's xTB geometry."""
    row = store_row(store, qm9_index)
    return perceive_graph(np.array(row["atomic_numbers"]), np.reshape(row["positions"], (-1, 3)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_spectra_store):
    """`chemgen train diffspectra` on the small store (CHEMGEN_SPECTRA_DIR), registered as a challenger."""
    out = tmp_path_factory.mktemp("diffspectra") / "run"
    done = runner.invoke(app, ["train", "diffspectra", "--config", "tiny", "--steps", "specformer=2,denoiser=30",
                               "--tokens-per-batch", "64", "--out", str(out), "--register", REGISTERED],
                         env={"CHEMGEN_SPECTRA_DIR": str(small_spectra_store)})
    assert done.exit_code == 0, done.output
    return out / "lineage"


@pytest.fixture()
def spy(monkeypatch):
    """Records every DiffSpectra.elucidate call (arguments and the samples it returned)."""
    calls = []
    original = DiffSpectra.elucidate

    def recording(self, spectra, present=None, **kwargs):
        result = original(self, spectra, present, **kwargs)
        calls.append({"spectra": spectra, "present": present, **kwargs, "result": result})
        return result

    monkeypatch.setattr(DiffSpectra, "elucidate", recording)
    return calls


def read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------- training through the generic path
def test_training_reads_the_spectra_store_and_holds_out_by_gdb_index(trained, small_spectra_store, monkeypatch):
    from chemgen.models.diffspectra.packs import store_version

    manifest = lineage.read_manifest(trained)
    version, _ = store_version(small_spectra_store / "qm9-xtb")
    assert manifest["model"] == "diffspectra" and manifest["steps"] == {"specformer": 2, "denoiser": 30}
    assert manifest["data"] == [f"qm9-xtb@{version}"]
    # three molecules train; 4220 (a multiple of 20) validates, so the diagnostics ran on held-out data
    assert manifest["run_report"]["train_systems"] == 3
    assert manifest["run_report"]["denoiser_diagnostics"]["val_loss"] > 0
    tracking.configure()
    runs = mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], output_format="list")
    run = next(r for r in runs if r.data.tags.get("model") == "diffspectra")
    assert run.data.tags["dataset.qm9-xtb"].startswith(version) and "denoiser/train/loss" in run.data.metrics
    # a run has nothing to score: import says so instead of failing inside the scorer
    imported = runner.invoke(app, ["train", "import", str(trained.parent)])
    assert imported.exit_code == 1 and "has no candidates.pt" in imported.output


# ---------------------------------------------------------------------------- elucidate, end to end
def test_elucidate_feeds_the_uploaded_spectra_and_writes_the_ranking_of_the_samples(trained, small_spectra_store,
                                                                                     tmp_path, spy):
    files, spectra = write_query(tmp_path / "upload", small_spectra_store, ACETYLENE)
    out = tmp_path / "out"
    done = runner.invoke(app, ["elucidate", *map(str, files), "--sources", "model", "--model", str(trained),
                               "--samples", "40", "--steps", "4", "--seed", "5", "--top-k", "4", "--no-rerank",
                               "--out", str(out)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    (call,) = spy
    # the files' values reach the model on its grid, both modalities present, with the options given
    for kind in ("ir", "raman"):
        np.testing.assert_allclose(call["spectra"][kind][0].numpy(), spectra[kind], rtol=1e-6, atol=1e-9)
    assert call["present"].tolist() == [[True, True]] and call["num_atoms"] is None
    assert (call["num_samples"], call["num_steps"], call["seed"]) == (40, 4, 5)
    # the files hold the ranking of exactly those samples
    expected = rank_candidates(call["result"][0], None, 4)
    rows = read_csv_rows(out / "candidates.csv")
    assert [(r["rank"], r["inchikey"], r["count"]) for r in rows] == [
        (str(c.rank), c.inchikey, str(c.count)) for c in expected]
    assert all(r["similarity"] == "" for r in rows)   # not re-ranked
    sdf = list(Chem.SDMolSupplier(str(out / "candidates.sdf"), removeHs=False)) if expected else []
    assert (out / "candidates.sdf").stat().st_size > 0 or not expected
    assert [m.GetProp("inchikey") for m in sdf] == [c.inchikey for c in expected]
    assert sorted(p.name for p in out.glob("candidate-*.png")) == [f"candidate-{c.rank:02d}.png" for c in expected]
    summary = json.loads((out / "query.json").read_text())
    assert summary["num_samples"] == 40 and summary["num_valid"] == expected.num_valid
    assert summary["files"] == {"ir": str(files[0]), "raman": str(files[1])}
    # the table lists every candidate, or says that no sample was one (a model trained for seconds rarely
    # samples a valid molecule: the re-ranking test lists real ones)
    for candidate in expected:
        assert candidate.smiles in done.output
    assert expected or "no candidate from any source" in done.output
    assert f"DiffSpectra: {expected.num_valid} of 40 samples valid" in done.output
    assert "searched model: DiffSpectra: 40 samples" in done.output and "library" not in done.output
    assert all(r["sources"] == "model" for r in rows)


def test_a_formula_fixes_the_atom_count_and_filters(trained, small_spectra_store, tmp_path, spy):
    files, _ = write_query(tmp_path / "upload", small_spectra_store, ACETYLENE, kinds=("raman",))
    out = tmp_path / "out"
    done = runner.invoke(app, ["elucidate", str(files[0]), "--sources", "model", "--model", str(trained), "--formula",
                               "H2C2", "--samples", "30", "--steps", "4", "--no-rerank", "--out", str(out)])
    assert done.exit_code == 0, done.output
    (call,) = spy
    assert call["num_atoms"].tolist() == [4] and call["present"].tolist() == [[False, True]]
    assert call["spectra"]["ir"] is None
    assert all(m is None or m.GetNumAtoms() == 4 for m in call["result"][0])
    expected = rank_candidates(call["result"][0], "C2H2", 10)
    rows = read_csv_rows(out / "candidates.csv")
    assert [r["inchikey"] for r in rows] == [c.inchikey for c in expected]
    assert all(r["formula"] == "C2H2" for r in rows)
    assert json.loads((out / "query.json").read_text())["formula"] == "C2H2"


def test_reranking_by_xtb_spectra_puts_the_matching_molecule_first(trained, small_spectra_store, tmp_path,
                                                                   monkeypatch):
    """The sampler is replaced by fixed samples (3 x cyanoacetylene, 2 x acetylene) so that the count ranks the
    wrong molecule first; GFN2-xTB spectra of both are compared with acetylene's, which must win."""
    samples = [sample_mol(small_spectra_store, i) for i in (CYANOACETYLENE, ACETYLENE, CYANOACETYLENE,
                                                            ACETYLENE, CYANOACETYLENE)]
    monkeypatch.setattr(DiffSpectra, "elucidate", lambda self, *args, **kwargs: [samples])
    files, _ = write_query(tmp_path / "upload", small_spectra_store, ACETYLENE)
    out = tmp_path / "out"
    done = runner.invoke(app, ["elucidate", *map(str, files), "--sources", "model", "--model", str(trained),
                               "--samples", "5", "--out", str(out)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    rows = read_csv_rows(out / "candidates.csv")
    assert [(r["smiles"], r["count"]) for r in rows] == [("C#C", "2"), ("C#CC#N", "3")]
    top, other = (float(r["similarity"]) for r in rows)
    # acetylene's own xTB spectra against its relaxed candidate (the comparison is built for measured spectra:
    # bands widened, heights compressed, so the store's own sharp spectrum scores a little below 1)
    assert top > 0.8 and other < top - 0.2
    assert float(rows[0]["similarity_ir"]) > 0.8 and float(rows[0]["similarity_raman"]) > 0.8
    assert len(list(out.glob("candidate-*.png"))) == 2 and f"{top:.3f}" in done.output


# ---------------------------------------------------------------------------- bad uploads and models
def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _big(path: Path) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(21 * 1024 * 1024)   # sparse: the size check comes before anything is read
    return path


def _no_xunits(path: Path, store: Path) -> Path:
    files, _ = write_query(path.parent / "src", store, ACETYLENE, kinds=("ir",))
    path.write_text("".join(line for line in files[0].read_text().splitlines(keepends=True)
                            if not line.startswith("##XUNITS")))
    return path


BAD_UPLOADS = {
    "empty": (lambda p, s: _csv(p / "empty.csv", ""), "empty.csv: empty file"),
    "binary": (lambda p, s: _bytes(p / "binary.jdx", b"\x00\x01\x02PK\x03\x04"), "binary.jdx: binary file"),
    "csv without x units": (lambda p, s: _csv(p / "bare.csv", "1000,0.5\n1001,0.6\n"), "bare.csv: no x units"),
    "jcamp without x units": (lambda p, s: _no_xunits(p / "nounits.jdx", s), "nounits.jdx: no ##XUNITS"),
    "wrong range": (lambda p, s: _csv(p / "nir.csv", "wavenumber (cm-1),absorbance\n"
                                      + "".join(f"{5000 + i},0.5\n" for i in range(0, 4000, 10))),
                    "nir.csv: covers 5000-8990 cm^-1, less than 500 cm^-1"),
    "too large": (lambda p, s: _big(p / "huge.csv"), "huge.csv: file of 22.0 MB is larger than the 21 MB limit"),
    "no signal": (lambda p, s: _csv(p / "flat.csv", "wavenumber (cm-1),absorbance\n"
                                    + "".join(f"{500 + i},0\n" for i in range(0, 3500, 10))),
                  "flat.csv: no positive IR signal"),
    "flat": (lambda p, s: _csv(p / "level.csv", "wavenumber (cm-1),absorbance\n"
                               + "".join(f"{500 + i},0.5\n" for i in range(0, 3500, 10))),
             "level.csv: a flat IR spectrum (every value 0.5): no band to compare"),
    "kind unknown": (lambda p, s: _csv(p / "what.csv", "wavenumber (cm-1),intensity\n1000,1\n2000,2\n"),
                     "what.csv: cannot tell the spectrum kind"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_one_error_naming_the_file_and_nothing_is_written(trained, small_spectra_store,
                                                                          tmp_path, case):
    make, message = BAD_UPLOADS[case]
    (tmp_path / "in").mkdir()
    path = make(tmp_path / "in", small_spectra_store)
    out = tmp_path / "out"
    done = runner.invoke(app, ["elucidate", str(path), "--model", str(trained), "--no-rerank", "--out", str(out)],
                         env={"COLUMNS": "400"})
    assert done.exit_code == 1 and done.output.startswith(f"error: {tmp_path / 'in'}"), done.output
    assert message in done.output and len(done.output.strip().splitlines()) == 1, done.output
    assert not out.exists()


def test_one_query_is_one_ir_and_one_raman_file(trained, small_spectra_store, tmp_path):
    files, _ = write_query(tmp_path / "a", small_spectra_store, ACETYLENE)
    other, _ = write_query(tmp_path / "b", small_spectra_store, CYANOACETYLENE, kinds=("ir",))
    twice = runner.invoke(app, ["elucidate", str(files[0]), str(other[0]), "--model", str(trained), "--out",
                                str(tmp_path / "out")], env={"COLUMNS": "400"})
    assert twice.exit_code == 1 and not (tmp_path / "out").exists()
    assert twice.output.strip() == (f"error: {other[0]}: a second IR spectrum for this query (the first is "
                                    f"{files[0]}); give one file per kind, one molecule per query")
    uv = _csv(tmp_path / "uv.csv", "wavelength (nm),absorbance\n" + "".join(f"{200 + i},0.5\n" for i in range(600)))
    refused = runner.invoke(app, ["elucidate", f"uv-vis:{uv}", "--model", str(trained)], env={"COLUMNS": "400"})
    assert refused.exit_code == 1 and "uv.csv: a UV-Vis spectrum; DiffSpectra reads IR and Raman" in refused.output
    # a prefix says the kind of a file that does not: this CSV names neither Raman nor absorbance
    values = broaden(store_row(small_spectra_store, ACETYLENE)["frequencies_cm1"],
                     store_row(small_spectra_store, ACETYLENE)["raman_a4_amu"], "raman")
    plain = _csv(tmp_path / "plain.csv", "wavenumber (cm-1),intensity\n"
                 + "".join(f"{x:.0f},{y:.8g}\n" for x, y in zip(GRID_CM1, values)))
    ok = runner.invoke(app, ["elucidate", f"raman:{plain}", "--model", str(trained), "--samples", "2", "--steps", "2",
                             "--no-rerank", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok" / "query.json").read_text())["files"] == {"raman": str(plain)}


def test_without_a_model_the_error_says_how_to_train_one(small_spectra_store, tmp_path, monkeypatch):
    from chemgen import lineage

    files, _ = write_query(tmp_path, small_spectra_store, ACETYLENE, kinds=("ir",))
    monkeypatch.setattr(lineage, "SHIPPED_ROOT", tmp_path / "nowhere")
    done = runner.invoke(app, ["elucidate", str(files[0]), "--sources", "model", "--out", str(tmp_path / "out")],
                         env={"COLUMNS": "400"})
    assert done.exit_code == 1 and not (tmp_path / "out").exists()
    assert f"no trained DiffSpectra at {tmp_path / 'nowhere' / 'diffspectra-cpu'}" in done.output
    assert "chemgen train diffspectra" in done.output
    # every source that exists, by default: the library answers, and the missing model is said, not fatal
    pooled = runner.invoke(app, ["elucidate", str(files[0]), "--out", str(tmp_path / "pooled")],
                           env={"COLUMNS": "400", "CHEMGEN_SPECTRA_DIR": str(small_spectra_store)})
    assert pooled.exit_code == 0, pooled.output
    assert "not searched model: no trained DiffSpectra" in pooled.output and "searched library:qm9-xtb" in pooled.output
    rows = read_csv_rows(tmp_path / "pooled" / "candidates.csv")
    assert rows[0]["smiles"] == "C#C" and rows[0]["sources"] == "library:qm9-xtb"


def test_a_model_of_another_kind_is_refused(small_spectra_store, tmp_path):
    from chemgen.models.gfmdiff import GFMDiff, preset

    model = GFMDiff(preset("tiny"))   # a real lineage of another model, written here
    gfmdiff = tmp_path / "gfmdiff-lineage"
    lineage.save(gfmdiff, model.checkpoint_groups(),
                 {"model": "gfmdiff", "config": model.config.to_dict(), "steps": {"denoiser": 0}, "data": []})
    files, _ = write_query(tmp_path, small_spectra_store, ACETYLENE, kinds=("ir",))
    done = runner.invoke(app, ["elucidate", str(files[0]), "--model", str(gfmdiff), "--out", str(tmp_path / "out")],
                         env={"COLUMNS": "400"})
    assert done.exit_code == 1 and "a gfmdiff-tiny model, which samples no molecules for spectra" in done.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- the registry pyfunc
def test_the_registered_pyfunc_answers_spectra_with_ranked_candidates(trained, small_spectra_store, tmp_path):
    from chemgen.elucidation.run import elucidate_spectra

    uri = f"models:/{REGISTERED}@challenger"
    assert mlflow.models.get_model_info(uri).metadata["paper"].startswith("Wang et al., DiffSpectra")
    _, spectra = write_query(tmp_path, small_spectra_store, ACETYLENE)
    pyfunc = mlflow.pyfunc.load_model(uri)
    queries = pd.DataFrame([
        {"ir": spectra["ir"].tolist(), "raman": spectra["raman"].tolist(), "num_samples": 24, "num_steps": 3,
         "seed": 2, "top_k": 10},
        {"ir": None, "raman": spectra["raman"].tolist(), "formula": "C2H2", "num_samples": 12, "num_steps": 3,
         "seed": 1, "top_k": 3}])
    frame = pyfunc.predict(queries)
    assert list(frame.columns) == ["query", "rank", "smiles", "inchikey", "count", "fraction", "formula"]
    model = loading.load_lineage_model(trained)
    expected = []
    for query, (given, formula, n, seed, top_k) in enumerate(
            [({"ir": spectra["ir"], "raman": spectra["raman"]}, None, 24, 2, 10),
             ({"raman": spectra["raman"]}, "C2H2", 12, 1, 3)]):
        ranking = elucidate_spectra(model, given, formula, n, 3, seed, top_k)
        expected += [(query, c.rank, c.smiles, c.inchikey, c.count) for c in ranking]
    assert list(frame[["query", "rank", "smiles", "inchikey", "count"]].itertuples(index=False, name=None)) == expected
    assert set(frame.loc[frame["query"] == 1, "formula"]) <= {"C2H2"}
    with pytest.raises(Exception, match="query 0: the query's ir spectrum has shape"):
        pyfunc.predict(pd.DataFrame([{"ir": [1.0] * 100}]))
    # the registry URI serves `chemgen elucidate` too (the pyfunc holds the model)
    assert isinstance(loading.load_model(uri), DiffSpectra)
    torch.testing.assert_close(loading.load_model(uri).dmt.state_dict(), model.dmt.state_dict())

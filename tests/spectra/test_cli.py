"""`chemgen spectra compute|resample` and `chemgen data prepare|info qm9-spectra` as a user runs them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tblite")

from chemgen import io  # noqa: E402
from chemgen.atoms import AtomicSystem  # noqa: E402
from chemgen.cli.app import app  # noqa: E402
from chemgen.spectra import broadening, files  # noqa: E402

runner = CliRunner()


def test_compute_from_smiles_and_sdf_writes_jcamp_png_and_geometry(tmp_path):
    from chemgen.spectra.molecules import embed_smiles

    sdf = tmp_path / "ethanol.sdf"
    io.write(sdf, [embed_smiles("CCO")])
    smi = tmp_path / "more.smi"
    smi.write_text("# SMILES name\nO ../../escape attempt\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["spectra", "compute", str(sdf), str(smi), "--smiles", "CC(C)=O", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 of 3 molecule(s) computed" in result.output
    names = sorted(p.name for p in out.iterdir())
    assert "ethanol.ir.jdx" in names and "smiles_0.raman.jdx" in names and "spectra.csv" in names
    assert "escape.ir.jdx" in names and not list(tmp_path.glob("*.jdx"))  # names never leave --out
    assert (out / "smiles_0.png").read_bytes()[:4] == b"\x89PNG"
    acetone = files.read_spectrum(out / "smiles_0.ir.jdx")
    assert acetone.kind == "ir" and len(acetone.x_cm1) == len(broadening.GRID_CM1)
    peak = acetone.x_cm1[np.argmax(acetone.y)]
    assert 1650 <= peak <= 1900  # the C=O stretch dominates acetone's IR spectrum
    relaxed = io.read(out / "smiles_0.xyz")[0]
    assert relaxed.num_atoms == 10


def test_compute_reports_bad_input_without_traceback(tmp_path):
    bad = runner.invoke(app, ["spectra", "compute", "--smiles", "C1CC", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "RDKit cannot parse" in bad.output and "Traceback" not in bad.output
    crystal = tmp_path / "nacl.cif"
    io.write(crystal, [AtomicSystem.crystal([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 5.64)])
    periodic = runner.invoke(app, ["spectra", "compute", str(crystal), "--out", str(tmp_path / "o")])
    assert periodic.exit_code == 1 and "periodic" in periodic.output
    smi = tmp_path / "bad.smi"
    smi.write_text("CCO ok\nnot_a_smiles broken\n")
    result = runner.invoke(app, ["spectra", "compute", str(smi), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and f"{smi}: line 2" in result.output


def test_resample_keeps_good_files_and_names_bad_ones(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("wavenumber (cm-1),absorbance\n" + "".join(f"{x},{np.exp(-((x - 1700) / 10) ** 2)}\n"
                                                                for x in range(400, 4001, 2)))
    empty = tmp_path / "empty.jdx"
    empty.write_text("")
    result = runner.invoke(app, ["spectra", "resample", str(good), str(empty), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert f"{empty}: empty file" in result.output
    back = files.read_spectrum(tmp_path / "r" / "good.ir.csv", kind="ir")
    assert len(back.x_cm1) == 3501 and back.x_cm1[np.argmax(back.y)] == 1700


def test_prepare_and_info_for_spectra(tmp_path):
    folder = tmp_path / "qm9-xtb"
    result = runner.invoke(app, ["data", "prepare", "qm9-spectra", "--limit", "2", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert "computed 2 molecules" in result.output and "2 (2 with spectra, 0 failed)" in result.output
    info = runner.invoke(app, ["data", "info", "qm9-spectra", "--out", str(folder), "--verify",
                               "--plot", str(tmp_path / "plots")])
    assert info.exit_code == 0, info.output
    assert "match the manifest" in info.output.replace("\n", " ") or "matches the manifest" in info.output
    assert "fitted scale" in info.output
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "frequency_histogram.png", "spectra_examples.png", "xtb_vs_b3lyp.png"]
    (folder / "shard-000000-000002.parquet").write_bytes(b"tampered")
    broken = runner.invoke(app, ["data", "info", "qm9-spectra", "--out", str(folder), "--verify"])
    assert broken.exit_code == 1 and "unreadable shard" in broken.output
    bad_until = runner.invoke(app, ["data", "prepare", "qm9-spectra", "--until", "25:99", "--out", str(tmp_path / "x")])
    assert bad_until.exit_code == 1 and "expected HH:MM" in bad_until.output

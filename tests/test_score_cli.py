"""`chemgen score` on real files: tables, JSON, CSV, plots; bad items scored invalid, never fatal."""

import json

import pandas as pd
from typer.testing import CliRunner

from chemgen import io
from chemgen.cli import app

runner = CliRunner()


def test_score_real_qm9_molecules_from_sdf(tmp_path, qm9_systems):
    path = io.write(tmp_path / "mols.sdf", qm9_systems[:40])
    result = runner.invoke(app, ["score", str(path), "--kind", "molecule", "--out", str(tmp_path / "out"),
                                 "--reference", str(path), "--protocol", "edm"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "scores.json").read_text())["metrics"]
    assert metrics["edm/validity"] >= 0.9 and metrics["edm/atom_stability"] >= 0.95
    assert metrics["edm/novelty"] == 0.0  # every molecule is in its own reference set
    assert len(pd.read_csv(tmp_path / "out" / "per_sample.csv")) == 40
    assert list((tmp_path / "out").glob("*.png"))


def test_score_cif_folder_with_a_broken_file(tmp_path, mp20_systems):
    folder = tmp_path / "cifs"
    for i, system in enumerate(mp20_systems[:5]):
        io.write(folder / f"s{i}.cif", [system])
    (folder / "broken.cif").write_text("data_x\nloop_\n_atom_site_label\n")
    result = runner.invoke(app, ["score", str(folder), "--kind", "crystal", "--out", str(tmp_path / "out"),
                                 "--reference", str(folder / "s0.cif")])
    assert result.exit_code == 0, result.output
    assert "1 item(s) could not be read" in result.output
    metrics = json.loads((tmp_path / "out" / "scores.json").read_text())["metrics"]
    assert metrics["n_samples"] == 6 and metrics["cdvae/struct_valid"] == 5 / 6


def test_score_cdvae_csv_and_molecules_in_a_crystal_run(tmp_path, data_dir, qm9_systems):
    rows = pd.read_csv(data_dir / "mp_20" / "test.csv.gz", nrows=12)
    rows.loc[3, "cif"] = "not a cif"
    rows.to_csv(tmp_path / "gen.csv", index=False)
    result = runner.invoke(app, ["score", str(tmp_path / "gen.csv"), "--kind", "crystal", "--out", str(tmp_path / "o1")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o1" / "scores.json").read_text())["metrics"]
    assert metrics["n_samples"] == 12 and metrics["cdvae/struct_valid"] == 11 / 12
    mixed = io.write(tmp_path / "mixed.extxyz", [qm9_systems[0]])
    result = runner.invoke(app, ["score", str(mixed), "--kind", "crystal", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 0 and "1 item(s) could not be read" in result.output


def test_score_errors_exit_non_zero(tmp_path):
    missing = runner.invoke(app, ["score", str(tmp_path / "none.cif"), "--kind", "crystal"])
    assert missing.exit_code == 1 and "no such file" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["score", str(empty), "--kind", "crystal"])
    assert result.exit_code == 1 and "holds no" in result.output
    bad_kind = runner.invoke(app, ["score", str(empty), "--kind", "protein"])
    assert bad_kind.exit_code == 1 and "kind must be one of" in bad_kind.output

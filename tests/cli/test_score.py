"""`chemgen score` on real files: tables, JSON, CSV, plots; bad items scored invalid, never fatal;
the relaxed-molecule protocol (edm_mmff) on SDF, plain XYZ and a folder."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from chemgen import io
from chemgen.atoms import SYMBOLS
from chemgen.cli.app import app

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


def _noisy(systems, rmsd=0.10, seed=0):
    """Each atom displaced by isotropic Gaussian noise of RMS length ``rmsd`` Angstrom."""
    rng = np.random.default_rng(seed)
    return [s.replace(pos=s.pos + rng.normal(0.0, rmsd / np.sqrt(3), s.pos.shape)) for s in systems]


def _plain_xyz(system) -> str:
    lines = [str(system.num_atoms), "generated"]
    lines += [f"{SYMBOLS[z]} {x:.6f} {y:.6f} {w:.6f}" for z, (x, y, w) in zip(system.atomic_numbers, system.pos)]
    return "\n".join(lines) + "\n"


def test_score_edm_mmff_beside_edm_on_noisy_qm9_sdf(tmp_path, qm9_systems):
    path = io.write(tmp_path / "noisy.sdf", _noisy(qm9_systems[:30]))
    result = runner.invoke(app, ["score", str(path), "--kind", "molecule", "--out", str(tmp_path / "out"),
                                 "--reference", str(path), "--protocol", "edm", "--protocol", "edm_mmff"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "scores.json").read_text())["metrics"]
    assert {k.split("/")[0] for k in metrics} == {"edm", "edm_mmff"}
    # 0.10 A of noise: raw EDM rejects nearly every molecule, the relaxed protocol keeps most.
    assert metrics["edm/molecule_stability"] < 0.2 < 0.6 < metrics["edm_mmff/molecule_stability"]
    assert metrics["edm_mmff/relaxed"] > 0.9 and "edm_mmff/novelty" in metrics
    table = pd.read_csv(tmp_path / "out" / "per_sample.csv")
    assert len(table) == 30 and table["edm_mmff/relaxation"].str.startswith(("MMFF94", "UFF")).mean() > 0.9
    assert (table["edm_mmff/displacement"] > 0).mean() > 0.9
    assert list((tmp_path / "out").glob("edm_mmff_*.png"))


def test_score_edm_mmff_alone_on_plain_xyz_file_and_folder(tmp_path, qm9_systems):
    noisy = _noisy(qm9_systems[30:36], seed=1)
    folder = tmp_path / "xyz"
    folder.mkdir()
    for i, system in enumerate(noisy):
        (folder / f"m{i}.xyz").write_text(_plain_xyz(system))
    for target, n in ((folder / "m0.xyz", 1), (folder, 6)):
        out = tmp_path / f"out-{n}"
        result = runner.invoke(app, ["score", str(target), "--kind", "molecule", "--out", str(out),
                                     "--reference", str(folder / "m0.xyz"), "--protocol", "edm_mmff"])
        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "scores.json").read_text())["metrics"]
        assert {k.split("/")[0] for k in metrics} == {"edm_mmff"}
        assert metrics["edm_mmff/num_molecules"] == n and metrics["edm_mmff/relaxed"] == 1.0


def test_score_unknown_molecule_protocol_exits_non_zero(tmp_path, qm9_systems):
    path = io.write(tmp_path / "mols.sdf", qm9_systems[:2])
    result = runner.invoke(app, ["score", str(path), "--kind", "molecule", "--protocol", "mmff"])
    assert result.exit_code == 1 and "edm_mmff" in result.output


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

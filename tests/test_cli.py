"""The `chemgen` command as a user runs it: exit codes, messages, files written."""

import subprocess
import sys

from typer.testing import CliRunner

from chemgen import io
from chemgen.cli import app

runner = CliRunner()


def test_data_prepare_then_info_then_no_op(mp20_slice_dir, store, tmp_path):
    result = runner.invoke(app, ["data", "prepare", "mp20", "--data-dir", str(mp20_slice_dir), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "curated" in result.output and "train 76 / valid 4 / test 40" in result.output
    again = runner.invoke(app, ["data", "prepare", "mp20", "--data-dir", str(mp20_slice_dir), "--store", str(store)])
    assert again.exit_code == 0 and "reused existing version" in again.output
    info = runner.invoke(app, ["data", "info", "mp20", "--store", str(store), "--verify", "--plot", str(tmp_path / "plots")])
    assert info.exit_code == 0, info.output
    assert "all shard hashes match" in info.output
    pngs = list((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"


def test_unknown_dataset_and_missing_folder_exit_non_zero_with_message(tmp_path, store):
    bad = runner.invoke(app, ["data", "prepare", "qm10", "--store", str(store)])
    assert bad.exit_code == 1 and "unknown dataset 'qm10'" in bad.output
    missing = runner.invoke(app, ["data", "prepare", "perov5", "--data-dir", str(tmp_path / "nope"), "--store", str(store)])
    assert missing.exit_code == 1 and "no such folder" in missing.output
    empty = runner.invoke(app, ["data", "info", "--store", str(store)])
    assert empty.exit_code == 1 and "store is empty" in empty.output


def test_convert_round_trip_and_bad_input(tmp_path, mp20_systems):
    source = io.write(tmp_path / "in.cif", mp20_systems[:3])
    ok = runner.invoke(app, ["convert", str(source), str(tmp_path / "out.extxyz")])
    assert ok.exit_code == 0 and "wrote 3 structure(s)" in ok.output
    assert all(a.allclose(b) for a, b in zip(mp20_systems[:3], io.read(tmp_path / "out.extxyz")))
    broken = tmp_path / "broken.cif"
    broken.write_text("data_x\nloop_\n_atom_site_label\n")
    bad = runner.invoke(app, ["convert", str(broken), str(tmp_path / "never.xyz")])
    assert bad.exit_code == 1 and "broken.cif" in bad.output
    assert not (tmp_path / "never.xyz").exists()


def test_console_script_runs_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "chemgen.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "data" in done.stdout


def test_sample_without_a_model_uses_the_shipped_checkpoint(tmp_path, monkeypatch):
    """`chemgen sample adit` with no --model samples models/weights/adit-gpu-quick (committed), and says
    clearly when a checkout lacks it."""
    from chemgen.generation import lineage, runs

    if lineage.is_lineage(runs.shipped_lineage("adit-gpu-quick")):
        done = runner.invoke(app, ["sample", "adit", "--kind", "molecule", "--n", "2", "--steps", "3", "--no-score",
                                   "--out", str(tmp_path / "samples")])
        assert done.exit_code == 0, done.output
        assert (tmp_path / "samples" / "summary.csv").is_file()
    monkeypatch.setattr(runs, "SHIPPED_ROOT", tmp_path / "nowhere")
    missing = runner.invoke(app, ["sample", "adit", "--kind", "molecule", "--n", "2", "--no-score",
                                  "--out", str(tmp_path / "never")])
    assert missing.exit_code != 0 and "no shipped checkpoint" in missing.output


def test_main_job_summary_states_the_shipped_checkpoints_recorded_quality(tmp_path, monkeypatch):
    from chemgen.generation import lineage, runs
    from chemgen.pipeline import shipped_summary

    if lineage.is_lineage(runs.shipped_lineage("adit-gpu-quick")):
        line = shipped_summary()
        assert line.startswith("models/weights/adit-gpu-quick") and "QM9 EDM molecule stability" in line
    monkeypatch.setattr(runs, "SHIPPED_ROOT", tmp_path / "nowhere")
    assert shipped_summary() is None

"""The `chemgen` command as a user runs it: exit codes, messages, files written."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from chemgen import io
from chemgen.cli.app import app

runner = CliRunner()


def test_data_prepare_then_info_then_no_op(mp20_slice_dir, store, tmp_path):
    result = runner.invoke(app, ["data", "prepare", "mp20", "--data-dir", str(mp20_slice_dir), "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert "curated" in result.output and "train 76 / valid 4 / test 40" in result.output
    again = runner.invoke(app, ["data", "prepare", "mp20", "--data-dir", str(mp20_slice_dir), "--store", str(store)])
    assert again.exit_code == 0 and "reused the existing version" in again.output
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
    from chemgen import lineage

    if lineage.is_lineage(lineage.shipped_lineage("adit-gpu-quick")):
        done = runner.invoke(app, ["sample", "adit", "--kind", "molecule", "--n", "2", "--steps", "3", "--no-score",
                                   "--out", str(tmp_path / "samples")])
        assert done.exit_code == 0, done.output
        assert (tmp_path / "samples" / "summary.csv").is_file()
    monkeypatch.setattr(lineage, "SHIPPED_ROOT", tmp_path / "nowhere")
    missing = runner.invoke(app, ["sample", "adit", "--kind", "molecule", "--n", "2", "--no-score",
                                  "--out", str(tmp_path / "never")])
    assert missing.exit_code != 0 and "no shipped checkpoint" in missing.output


def test_sample_without_a_curated_dataset_says_so_first_and_scores_the_rest(tmp_path):
    """QM9 was never curated into this store: sampling goes on without novelty, and says so before any sample is
    drawn (it used to sample for minutes and then fail)."""
    done = runner.invoke(app, ["sample", "gfmdiff", "--kind", "molecule", "--n", "3", "--steps", "2",
                               "--store", str(tmp_path / "empty-store"), "--out", str(tmp_path / "samples")])
    assert done.exit_code == 0, done.output
    note = done.output.index("novelty is not reported")
    assert note < done.output.index("3 samples of qm9")
    scores = json.loads((tmp_path / "samples" / "scores" / "scores.json").read_text())["metrics"]
    assert "edm/validity" in scores and not any(k.endswith("novelty") for k in scores)


def test_main_job_summary_states_the_shipped_checkpoints_recorded_quality(tmp_path, monkeypatch):
    from chemgen import lineage
    from chemgen.flows.main_job import shipped_summary

    if lineage.is_lineage(lineage.shipped_lineage("adit-gpu-quick")):
        line = shipped_summary()
        assert line.startswith("models/weights/adit-gpu-quick") and "QM9 EDM molecule stability" in line
    monkeypatch.setattr(lineage, "SHIPPED_ROOT", tmp_path / "nowhere")
    assert shipped_summary() is None


# ---------------------------------------------------------------------------- one error handler
def test_a_user_error_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["convert", str(tmp_path / "none.cif"), str(tmp_path / "out.xyz")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'none.cif'}: no such file"]


def test_an_internal_bug_keeps_its_traceback(tmp_path, mp20_systems, monkeypatch):
    """A plain ValueError from inside chemgen is a bug, not a user error: it is not turned into `error: cif`."""
    source = io.write(tmp_path / "in.cif", mp20_systems[:1])

    def broken(*args, **kwargs):
        raise ValueError("cif")

    monkeypatch.setattr(io, "read", broken)
    result = runner.invoke(app, ["convert", str(source), str(tmp_path / "out.xyz")])
    assert result.exit_code != 0 and isinstance(result.exception, ValueError) and "cif" == str(result.exception)
    assert "error:" not in result.output


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    from chemgen.io import StructureFileError

    args = ["convert", str(tmp_path / "none.cif"), str(tmp_path / "out.xyz")]
    for result in (runner.invoke(app, ["--debug", *args]), runner.invoke(app, args, env={"CHEMGEN_DEBUG": "1"})):
        assert result.exit_code == 1 and isinstance(result.exception, StructureFileError)
        assert "error:" not in result.output


def _run_cli(tmp_path, *args, patch=""):
    """`chemgen ARGS` in a fresh interpreter, as the console script runs it (``patch`` runs first)."""
    script = f"import sys\n{patch}\nfrom chemgen.cli.app import app\nsys.argv = ['chemgen', *{list(args)!r}]\napp()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_console_errors_user_bug_and_debug_in_a_subprocess(tmp_path):
    args = ("convert", str(tmp_path / "none.cif"), str(tmp_path / "out.xyz"))
    user = _run_cli(tmp_path, *args)
    assert user.returncode == 1 and user.stderr.strip().splitlines() == [f"error: {tmp_path / 'none.cif'}: no such file"]
    debug = _run_cli(tmp_path, "--debug", *args)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StructureFileError" in debug.stderr
    bug = _run_cli(tmp_path, *args, patch="import chemgen.io\nchemgen.io.read = lambda *a, **k: {}['cif']")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'cif'" in bug.stderr
    assert "error:" not in bug.stderr


# ---------------------------------------------------------------------------- output folders checked up front
OUT_FOLDER_COMMANDS = [
    ["score", "{x}", "--kind", "crystal", "--out", "{file}"],
    ["spectra", "compute", "--smiles", "C", "--out", "{file}"],
    ["spectra", "resample", "{x}", "--out", "{file}"],
    ["sample", "adit", "--kind", "molecule", "--out", "{file}"],
    ["sample", "sweep", "--kind", "mp20", "--out", "{file}"],
    ["train", "adit", "--steps", "vae=1", "--out", "{file}"],
    ["train", "adit", "--steps", "vae=1", "--into", "{file}"],
    ["train", "packs", "--out", "{file}"],
    ["train", "import", "{x}", "--into", "{file}"],
    ["data", "prepare", "qm9-spectra", "--out", "{file}"],
    ["data", "prepare", "mp20", "--store", "{file}"],
    ["data", "info", "mp20", "--plot", "{file}"],
    ["flows", "screen", "--out", "{file}"],
    ["elucidate", "{x}", "--out", "{file}"],
]


@pytest.mark.parametrize("template", OUT_FOLDER_COMMANDS, ids=lambda t: " ".join(t[:2]) + " " + t[-2])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_folder_that_is_a_file_is_named_before_any_work(tmp_path, template, where):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    target = existing if where == "file" else existing / "sub"
    args = [a.format(file=target, x=tmp_path / "input.cif") for a in template]
    result = runner.invoke(app, args, env={"COLUMNS": "400"})
    option = template[-2]
    expected = (f"error: {option} {target}: exists and is not a folder" if where == "file"
                else f"error: {option} {target}: {existing} is a file, not a folder")
    assert result.exit_code == 1 and result.output.strip() == expected, result.output
    assert existing.read_text() == "keep me"


def test_an_output_file_that_is_a_folder_is_named(tmp_path, mp20_systems):
    source = io.write(tmp_path / "in.cif", mp20_systems[:1])
    result = runner.invoke(app, ["convert", str(source), str(tmp_path)])
    assert result.exit_code == 1 and result.output.strip() == f"error: TARGET {tmp_path}: is a folder, not a file name"
    jobs = runner.invoke(app, ["data", "prepare", "qm9-spectra", "--export-jobs", str(tmp_path)])
    assert jobs.exit_code == 1 and f"--export-jobs {tmp_path}: is a folder" in jobs.output


# ---------------------------------------------------------------------------- option values checked up front
@pytest.mark.parametrize("args, message", [
    (["sample", "adit", "--kind", "protein"], "error: unknown dataset or kind 'protein'"),
    (["sample", "adit", "--kind", "qm9", "--n", "0"], "error: --n must be at least 1, got 0"),
    (["sample", "sweep", "--kind", "qm9", "--solver", "rk4"], "error: --solver must be euler or heun, got rk4"),
    (["sample", "sweep", "--kind", "mp20", "--generator", "gpt"], "error: unknown model 'gpt'"),
    (["train", "adit", "--steps", "vae=x"], "error: --steps: 'vae=x': 'x' is not a number"),
    (["train", "adit", "--steps", "encoder=3"], "error: --steps: 'encoder=3' is not STAGE=NUMBER"),
    (["train", "adit"], "error: give --minutes or --steps"),
    (["train", "adit", "--steps", "vae=1", "--promote", "--samples", "0"], "error: --samples must be at least 1"),
    (["train", "adit", "--steps", "vae=1", "--data", "qm9@"], "error: dataset reference 'qm9@'"),
    (["train", "gfmdiff", "--steps", "denoiser=1", "--sampling-steps", "0"], "error: --sampling-steps must be at least 1"),
    (["train", "rescore", "{tmp}", "--sampling-steps", "50"], "error: --sampling-steps draws new samples: give --resample"),
    (["train", "rescore", "{tmp}", "--resample", "0"], "error: --resample must be at least 1, got 0"),
    (["train", "packs", "--out", "{tmp}", "--model", "gpt"], "error: unknown model 'gpt'"),
    (["score", "{tmp}", "--kind", "crystal", "--preset", "loose"], "error: --preset must be one of adit, pymatgen"),
    (["score", "{tmp}", "--kind", "crystal", "--validity", "smact"], "error: --validity must be cdvae or adit"),
    (["data", "prepare", "mp20", "--workers", "0"], "error: --workers must be at least 1, got 0"),
    (["data", "prepare", "qm9-spectra", "--until", "25:99", "--out", "{tmp}/x"], "error: --until '25:99': expected HH:MM"),
    (["spectra", "compute", "--out", "{tmp}"], "error: give molecule files or --smiles"),
    (["run", "--profile", "weekly"], "error: unknown profile 'weekly'"),
    (["train", "diffspectra", "--steps", "denoiser=1", "--samples", "5"],
     "error: diffspectra samples no dataset unconditionally, so its runs have nothing to score"),
    (["train", "diffspectra", "--steps", "denoiser=1", "--promote"], "error: diffspectra samples no dataset"),
    (["train", "diffspectra", "--steps", "dit=1"], "error: --steps: 'dit=1' is not STAGE=NUMBER; the stages are "
                                                   "specformer, denoiser"),
    (["train", "packs", "--out", "{tmp}", "--model", "diffspectra", "--store", "{tmp}/store"],
     "error: DiffSpectra trains on the spectra store"),
    (["elucidate", "{tmp}/q.jdx", "--samples", "0"], "error: --samples must be at least 1, got 0"),
    (["elucidate", "{tmp}/q.jdx", "--samples", "20000"], "error: --samples must be at most 10,000, got 20,000"),
    (["elucidate", "{tmp}/q.jdx", "--top-k", "0"], "error: --top-k must be at least 1, got 0"),
    (["elucidate", "{tmp}/q.jdx", "--steps", "0"], "error: --steps must be at least 1, got 0"),
    (["elucidate", "{tmp}/q.jdx", "--formula", "C2H2Cl"],
     "error: molecular formula 'C2H2Cl': DiffSpectra's molecules are made of H, C, N, O, F (QM9's elements), not Cl"),
    (["elucidate", "{tmp}/q.jdx", "--formula", "C10H22O"], "error: molecular formula 'C10H22O' has 33 atoms"),
    (["elucidate", "{tmp}/q.jdx", "--formula", "C2H3+"], "error: molecular formula 'C2H3+': charges are not supported"),
    (["elucidate", "{tmp}/q.jdx"], "error: {tmp}/q.jdx: no such file"),
])
def test_bad_option_values_are_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and result.output.startswith(message.format(tmp=tmp_path)), result.output
    assert len(result.output.strip().splitlines()) == 1

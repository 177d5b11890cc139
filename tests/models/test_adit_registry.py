"""ADiT through the whole stack: curated store -> tracked training -> registry -> pyfunc -> CLI sampling."""

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from chemgen import tracking
from chemgen.cli import app
from chemgen.data import BUILDERS
from chemgen.data.store import curate

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mp20_slice_dir):
    qm9 = curate(BUILDERS["qm9"](limit=200), progress=False)
    assert qm9.sliced  # a slice is a version of its own and never becomes LATEST
    curate(BUILDERS["mp20"](data_dir=mp20_slice_dir), progress=False)
    out = tmp_path_factory.mktemp("adit")
    unnamed = runner.invoke(app, ["train", "adit-vae", "--config", "tiny", "--accelerator", "cpu",
                                  "--out", str(out / "vae"), "--max-steps", "8"])
    assert unnamed.exit_code == 1 and "qm9@VERSION" in unnamed.output
    data = ["--data", f"qm9@{qm9.version}"]
    vae = runner.invoke(app, ["train", "adit-vae", "--config", "tiny", "--accelerator", "cpu", "--out", str(out / "vae"),
                              "--max-steps", "8", *data])
    assert vae.exit_code == 0, vae.output
    dit = runner.invoke(app, ["train", "adit-dit", "--config", "tiny", "--accelerator", "cpu", "--vae",
                              str(out / "vae" / "vae.pt"), "--out", str(out / "model"), "--max-steps", "8",
                              "--register", "chemgen-adit-test", *data])
    assert dit.exit_code == 0, dit.output
    out.joinpath("data").write_text(" ".join(data))
    return out


def test_training_runs_are_tracked_with_params_and_dataset_inputs(registered):
    tracking.configure()
    runs = mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], output_format="list")
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"vae", "dit"} <= stages
    vae_run = next(r for r in runs if r.data.tags.get("stage") == "vae")
    assert vae_run.data.params["vae.latent_dim"] == "4"
    assert "train/loss" in vae_run.data.metrics
    assert {d.dataset.name.split("@")[0] for d in vae_run.inputs.dataset_inputs} == {"qm9", "mp20"}
    assert vae_run.data.tags["dataset.qm9"].split()[1].startswith("sha256:")


def test_registered_pyfunc_answers_requests(registered):
    version = tracking.version_by_alias("chemgen-adit-test", tracking.CHALLENGER)
    assert version is not None
    model = mlflow.pyfunc.load_model("models:/chemgen-adit-test@challenger")
    frame = model.predict(pd.DataFrame([{"kind": "molecule", "n": 3, "seed": 1}, {"dataset": "mp20", "n": 2, "seed": 1}]))
    assert list(frame.groupby("request").size()) == [3, 2]
    assert set(frame.kind) == {"molecule", "crystal"} and set(frame.dataset) == {"qm9", "mp20"}
    crystals = frame[frame.kind == "crystal"]
    assert all(row.cif.startswith("# generated using pymatgen") or row.failure for row in crystals.itertuples())
    with pytest.raises(Exception, match="unknown dataset or kind 'protein'"):
        model.predict(pd.DataFrame([{"kind": "protein", "n": 1}]))
    with pytest.raises(Exception, match="not trained on 'perov5'"):  # a dataset it never saw: said, not guessed
        model.predict(pd.DataFrame([{"dataset": "perov5", "n": 1}]))


def test_cli_samples_from_the_registry(registered, tmp_path):
    result = runner.invoke(app, ["sample", "adit", "--model", "models:/chemgen-adit-test@challenger", "--kind", "molecule",
                                 "--n", "6", "--out", str(tmp_path / "s"), "--steps", "4",
                                 *(registered / "data").read_text().split()])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert len(summary) == 6 and "score_edm/valid" in summary.columns
    assert (tmp_path / "s" / "scores" / "scores.json").is_file()
    bad = runner.invoke(app, ["sample", "adit", "--model", str(tmp_path / "nowhere"), "--kind", "molecule"])
    assert bad.exit_code == 1 and "dit.pt" in bad.output


def test_cli_sweeps_sampling_settings_and_scores_every_cell(registered, tmp_path):
    result = runner.invoke(app, ["sample", "sweep", "--model", "models:/chemgen-adit-test@challenger", "--kind", "mp20",
                                 "--n", "4", "--cfg", "1", "--cfg", "2", "--steps", "3", "--solver", "euler",
                                 "--solver", "heun", "--out", str(tmp_path / "sw")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert len(table) == 4 and set(table.solver) == {"euler", "heun"} and set(table.cfg_scale) == {1.0, 2.0}
    assert table["cdvae/valid"].between(0, 1).all() and (tmp_path / "sw" / "sweep.png").stat().st_size > 0
    bad = runner.invoke(app, ["sample", "sweep", "--model", "models:/chemgen-adit-test@challenger", "--kind", "mp20",
                              "--solver", "rk4"])
    assert bad.exit_code == 1 and "euler or heun" in bad.output


def test_cli_trains_a_lineage_like_a_gpu_lease_then_scores_and_promotes(registered, tmp_path):
    """`chemgen train adit`: packs from the store, the shared loop, diagnostics, samples, then the gate."""
    from chemgen.generation import lineage

    target = tmp_path / "lineage"
    args = ["train", "adit", "--config", "tiny", "--minutes", "vae=0.05,dit=0.05", "--lineage", str(target),
            "--out", str(tmp_path / "run"), "--samples", "4", "--tokens-per-batch", "256",
            *(registered / "data").read_text().split()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "promoted" in said and "first version: no champion yet" in said
    first = lineage.read_manifest(target)
    assert first["steps"]["vae"] > 0 and "molecule/edm/validity" in first["scores"]
    assert (tmp_path / "run" / "reconstructions.pt").is_file()
    again = runner.invoke(app, [*args[:args.index("--out") + 1], str(tmp_path / "run2"), *args[args.index("--out") + 2:]])
    assert again.exit_code == 0, again.output
    assert len(lineage.runs(tmp_path / "run2" / "lineage")) == 2  # the second run continued the first


def test_cli_trains_into_a_lineage_and_samples_from_it(registered, tmp_path):
    from chemgen.generation import lineage

    folder = tmp_path / "weights" / "adit-tiny"
    for run in range(2):
        result = runner.invoke(app, ["train", "adit-dit", "--config", "tiny", "--accelerator", "cpu", "--vae",
                                     str(registered / "vae" / "vae.pt"), "--out", str(tmp_path / f"run{run}"),
                                     "--max-steps", "4", "--lineage", str(folder), *(registered / "data").read_text().split(),
                                     *(["--init-from", str(folder)] if run else [])])
        assert result.exit_code == 0, result.output
    assert lineage.read_manifest(folder)["steps"]["dit"] == 8          # 4 + 4: the count accumulates
    assert [r["init_from"] for r in lineage.runs(folder)] == ["", str(folder)]
    sampled = runner.invoke(app, ["sample", "adit", "--model", str(folder), "--kind", "crystal", "--n", "3",
                                  "--out", str(tmp_path / "s"), "--steps", "4", *(registered / "data").read_text().split()])
    assert sampled.exit_code == 0, sampled.output

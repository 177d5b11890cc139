"""ADiT through the whole stack: curated store -> tracked training -> registry -> pyfunc -> CLI sampling."""

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from chemgen import tracking
from chemgen.cli.app import app
from chemgen.datasets import curation_recipe
from chemgen.models.specs import load_config
from chemgen.data.store import curate

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mp20_slice_dir):
    qm9 = curate(curation_recipe("qm9", limit=200), progress=False)
    assert qm9.sliced  # a slice is a version of its own and never becomes LATEST
    curate(curation_recipe("mp20", data_dir=mp20_slice_dir), progress=False)
    out = tmp_path_factory.mktemp("adit")
    train = ["train", "adit", "--config", "tiny", "--steps", "vae=8,dit=8", "--out", str(out / "run"), "--samples", "0",
             "--tokens-per-batch", "256"]
    unnamed = runner.invoke(app, train)
    assert unnamed.exit_code == 1 and "qm9@VERSION" in unnamed.output
    data = ["--data", f"qm9@{qm9.version}"]
    trained = runner.invoke(app, [*train, "--register", "chemgen-adit-test", *data])
    assert trained.exit_code == 0, trained.output
    out.joinpath("data").write_text(" ".join(data))
    return out


def test_training_runs_are_tracked_with_params_and_dataset_inputs(registered):
    tracking.configure()
    runs = mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], output_format="list")
    run = next(r for r in runs if r.data.tags.get("model") == "adit" and "vae.latent_dim" in r.data.params)
    # the params are the settings the run used: the config with the command's budgets and batch in it
    params = run.data.params
    assert params["vae.latent_dim"] == "4" and params["vae_train.max_steps"] == "8" and params["dit_train.max_steps"] == "8"
    assert params["vae_train.tokens_per_batch"] == "256" and params["device"] == "cpu"
    assert float(params["vae_train.lr"]) == load_config("tiny").vae_train.lr
    assert {"vae/train/loss", "dit/train/loss", "vae/steps", "dit_diagnostics/dit_error_molecule_0.99"} <= set(
        run.data.metrics)
    assert {d.dataset.name.split("@")[0] for d in run.inputs.dataset_inputs} == {"qm9", "mp20"}
    assert run.data.tags["dataset.qm9"].split()[1].startswith("sha256:")


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
    assert bad.exit_code == 1 and "not a trained model" in bad.output


def test_cli_sweeps_sampling_settings_and_scores_every_cell(registered, tmp_path):
    result = runner.invoke(app, ["sample", "sweep", "--model", "models:/chemgen-adit-test@challenger", "--kind", "mp20",
                                 "--n", "4", "--cfg", "1", "--cfg", "2", "--steps", "3", "--solver", "euler",
                                 "--solver", "heun", "--out", str(tmp_path / "sw")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "sw" / "sweep.csv")
    assert len(table) == 4 and set(table.solver) == {"euler", "heun"} and set(table.cfg_scale) == {1.0, 2.0}
    assert table["cdvae/valid"].between(0, 1).all() and (tmp_path / "sw" / "sweep.png").stat().st_size > 0
    again = runner.invoke(app, ["sample", "sweep", "--model", "models:/chemgen-adit-test@challenger", "--kind", "mp20",
                                "--n", "4", "--cfg", "1", "--cfg", "2", "--steps", "3", "--solver", "euler",
                                "--solver", "heun", "--out", str(tmp_path / "sw")])
    assert again.exit_code == 0, again.output   # every cell was in sweep.csv: resumed, nothing sampled again
    assert pd.read_csv(tmp_path / "sw" / "sweep.csv")["seconds"].tolist() == table["seconds"].tolist()
    bad = runner.invoke(app, ["sample", "sweep", "--model", "models:/chemgen-adit-test@challenger", "--kind", "mp20",
                              "--solver", "rk4"])
    assert bad.exit_code == 1 and "euler or heun" in bad.output


def test_cli_trains_through_a_lineage_then_scores_promotes_and_samples_it(registered, tmp_path):
    """`chemgen train adit`: packs from the store, the shared trainer, diagnostics, samples, then the gate; a second
    run continues the promoted lineage and its steps and run log accumulate."""
    from chemgen import lineage

    target = tmp_path / "weights" / "adit-tiny"
    data = (registered / "data").read_text().split()
    args = ["train", "adit", "--config", "tiny", "--steps", "vae=4,dit=4", "--into", str(target), "--promote",
            "--samples", "4", "--tokens-per-batch", "256", *data]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "promoted" in said and "first version: no champion yet" in said
    first = lineage.read_manifest(target)
    assert first["steps"] == {"vae": 4, "dit": 4} and "molecule/edm/validity" in first["scores"]
    assert "reconstruction/recon_edm_atom_stability" in first["scores"]
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "run2"), "--init", str(target), "--steps", "dit=4"])
    assert again.exit_code == 0, again.output
    assert len(lineage.runs(tmp_path / "run2" / "lineage")) == 2  # the second run continued the first
    assert lineage.read_manifest(tmp_path / "run2" / "lineage")["steps"] == {"vae": 4, "dit": 8}
    sampled = runner.invoke(app, ["sample", "adit", "--model", str(target), "--kind", "crystal", "--n", "3",
                                  "--out", str(tmp_path / "s"), "--steps", "4", *data])
    assert sampled.exit_code == 0, sampled.output
    bad = runner.invoke(app, ["train", "adit", "--config", "tiny", "--steps", "vea=4"])
    assert bad.exit_code == 1 and "the stages are vae, dit" in " ".join(bad.output.split())

"""GFMDiff through the shared stack: curated store -> tracked training (the shared trainer and lineage) ->
registry -> pyfunc -> CLI sampling and scoring, as ADiT goes."""

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from chemgen import tracking
from chemgen.cli.app import app
from chemgen.datasets import curation_recipe
from chemgen.data.store import curate
from chemgen import lineage

runner = CliRunner()


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    qm9 = curate(curation_recipe("qm9", limit=200), progress=False)
    out = tmp_path_factory.mktemp("gfmdiff")
    data = ["--data", f"qm9@{qm9.version}"]
    trained = runner.invoke(app, ["train", "gfmdiff", "--config", "tiny", "--steps", "denoiser=6", "--out",
                                  str(out / "run"), "--samples", "4", "--tokens-per-batch", "128",
                                  "--register", "chemgen-gfmdiff-test", *data])
    assert trained.exit_code == 0, trained.output
    out.joinpath("data").write_text(" ".join(data))
    return out


def test_training_goes_through_the_lineage_and_is_tracked(registered):
    manifest = lineage.read_manifest(registered / "run" / "lineage")
    assert manifest["model"] == "gfmdiff" and manifest["steps"] == {"denoiser": 6}
    assert (registered / "run" / "samples_qm9.pt").is_file()
    tracking.configure()
    runs = mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], output_format="list")
    run = next(r for r in runs if r.data.tags.get("model") == "gfmdiff")
    assert run.data.params["dtn.num_blocks"] == "2" and run.data.params["diffusion.gfloss"] == "True"
    assert "denoiser/train/loss" in run.data.metrics


def test_registered_pyfunc_answers_molecule_requests_and_refuses_crystals(registered):
    assert tracking.version_by_alias("chemgen-gfmdiff-test", tracking.CHALLENGER) is not None
    model = mlflow.pyfunc.load_model("models:/chemgen-gfmdiff-test@challenger")
    frame = model.predict(pd.DataFrame([{"kind": "molecule", "n": 3, "seed": 1}]))
    assert len(frame) == 3 and set(frame.dataset) == {"qm9"}
    with pytest.raises(Exception, match="not trained on 'mp20'"):
        model.predict(pd.DataFrame([{"kind": "crystal", "n": 1}]))


def test_cli_samples_and_scores_from_the_registry(registered, tmp_path):
    result = runner.invoke(app, ["sample", "gfmdiff", "--model", "models:/chemgen-gfmdiff-test@challenger",
                                 "--kind", "molecule", "--n", "5", "--out", str(tmp_path / "s"), "--steps", "4",
                                 *(registered / "data").read_text().split()])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert len(summary) == 5 and "score_edm/valid" in summary.columns
    wrong = runner.invoke(app, ["sample", "gfmdiff", "--model", "models:/chemgen-gfmdiff-test@challenger",
                                "--kind", "molecule", "--solver", "heun", "--n", "1", "--no-score"])
    assert wrong.exit_code == 1 and "ancestrally" in wrong.output


def test_a_run_is_scored_and_promoted_through_the_shared_import(registered, tmp_path):
    """`chemgen train import` on a GFMDiff run: EDM scores of its samples, the context of its ancestral sampler
    (no guidance), then the gate: an empty target takes it as the first checkpoint, the same run again is kept."""
    shipped = tmp_path / "shipped"
    first = runner.invoke(app, ["train", "import", str(registered / "run"), "--samples", "4", "--into", str(shipped)])
    assert first.exit_code == 0, first.output
    manifest = lineage.read_manifest(shipped)
    assert manifest["model"] == "gfmdiff" and "molecule/edm/validity" in manifest["scores"]
    assert manifest["evaluation"]["context"]["sampling_steps"] == "20" and "cfg_scale" not in manifest["evaluation"]["context"]
    again = runner.invoke(app, ["train", "import", str(registered / "run"), "--samples", "4", "--into", str(shipped)])
    assert again.exit_code == 0 and "kept the shipped checkpoint" in again.output.replace("\n", " ")

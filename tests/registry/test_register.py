"""A registered version installs anywhere: the chemgen wheel beside the weights, named by requirements.txt, and
its model card as its description; loaded and served from a process outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import pytest

from chemgen import tracking
from chemgen.paths import source_checkout
from chemgen.registry.cards import DESCRIPTION_LIMIT, model_card, registry_description
from chemgen.registry.register import register

LINEAGE = Path(__file__).resolve().parents[2] / "models" / "weights" / "gfmdiff-cpu"   # the smallest shipped one


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tracking.configure()
    version = register(LINEAGE, "chemgen-gfmdiff-install-test")
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/chemgen-gfmdiff-install-test/{version.version}",
                                                      dst_path=str(tmp_path_factory.mktemp("model"))))
    return version, folder


def test_the_version_carries_the_wheel_its_requirements_name_and_its_model_card(registered):
    version, folder = registered
    import chemgen

    requirements = (folder / "requirements.txt").read_text().split()
    wheel_line = f"artifacts/chemgen-{chemgen.__version__}-py3-none-any.whl"
    assert wheel_line in requirements and not any(r.startswith("chemgen==") for r in requirements)
    with zipfile.ZipFile(folder / wheel_line) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"chemgen-{chemgen.__version__}.dist-info/METADATA").decode()
    # the package whole (configs and calibration as package data), its dependencies stated as ranges to resolve
    assert "chemgen/registry/generator_pyfunc.py" in names and "chemgen/elucidation/calibration.json" in names
    assert "Requires-Dist: torch" in metadata and "Requires-Dist: mlflow" in metadata
    client = tracking.client()
    card = model_card(LINEAGE)
    description = client.get_model_version(version.name, version.version).description
    assert client.get_registered_model(version.name).description == description
    # the registry's column holds 5,000 characters on PostgreSQL: the card's first sections and where the rest is
    assert len(card) > DESCRIPTION_LIMIT >= len(description) and card.startswith(description.split("\n\n*The card")[0])
    assert f"`model_card.md` of MLflow run {version.run_id}" in description and "GFMDiff" in description
    assert mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md") == card   # the whole card
    assert registry_description("# short\n", "x") == "# short\n"


def test_a_process_outside_the_checkout_loads_and_serves_it_from_the_wheel(registered, tmp_path):
    _, folder = registered
    wheel = next((folder / "artifacts").glob("chemgen-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CHEMGEN_DATA_DIR", "CHEMGEN_WEIGHTS_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), CHEMGEN_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    script = ("import json, sys, chemgen, mlflow.pyfunc, pandas as pd\n"
              "assert chemgen.__file__.startswith(sys.argv[2]), chemgen.__file__\n"
              "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "frame = model.predict(pd.DataFrame([{'kind': 'molecule', 'n': 2, 'seed': 0, 'num_steps': 4}]))\n"
              "print(json.dumps({'rows': len(frame), 'columns': list(frame.columns)}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(site)], cwd=away, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["rows"] == 2 and "smiles" in answer["columns"]
    assert source_checkout() is not None   # the wheel was built from this checkout's sources
    # the MLflow CLI serves the same folder with the local environment
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"dataframe_split": {"columns": ["kind", "n", "seed", "num_steps"],
                                                       "data": [["molecule", 2, 1, 4]]}}))
    served = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", str(folder), "-i",
                             str(request), "-t", "json", "--env-manager", "local"], cwd=away, env=env,
                            capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stdout.count("smiles") >= 1

"""What an installed chemgen carries and where it looks for what it does not: the wheel holds the packages
and the model configs (package data), and outside a source checkout the data and weights directories
come from the environment, never from a path relative to site-packages. `make check-wheel` (run by CI)
installs the wheel and runs the CLI; this builds it and reads its contents (seconds)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from chemgen import paths
from chemgen.config import ConfigError, known_configs
from chemgen.models.specs import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of the working tree, built offline from a copy of the sources (no stale ./build)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "chemgen", src / "chemgen", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(base / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = (base / "dist").glob("chemgen-*.whl")
    return built


def test_the_wheel_carries_the_packages_and_every_model_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.name for p in (ROOT / "chemgen" / "configs").glob("*.yaml"))
    assert "adit-tiny.yaml" in configs and "adit-gpu-quick.yaml" in configs
    assert {f"chemgen/configs/{c}" for c in configs} <= names
    assert {"chemgen/cli/app.py", "chemgen/paths.py", "chemgen/flows/screen.py", "chemgen/flows/deploy.py"} <= names
    # data, weights and tests stay out of it
    assert not [n for n in names if n.startswith(("tests/", "models/", "datasets/")) or n.endswith(".safetensors")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "chemgen = chemgen.cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_configs_load_as_package_resources():
    assert {"tiny", "cpu", "gpu-quick", "dit-s", "dit-b"} <= set(known_configs("adit"))
    assert load_config("tiny").name == "adit-tiny" and load_config("adit-gpu-quick").name == "adit-gpu-quick"
    with pytest.raises(ConfigError, match=r"no adit config named 'huge' \(known: cpu, dit-b, dit-s, gpu-quick, tiny"):
        load_config("huge")


def test_a_checkout_is_recognised_by_its_pyproject(tmp_path):
    assert paths.source_checkout() == ROOT  # these tests run from one
    package = tmp_path / "root" / "chemgen"
    package.mkdir(parents=True)
    assert paths.find_checkout(package) is None  # site-packages: no pyproject beside the package
    (package.parent / "pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    assert paths.find_checkout(package) is None
    (package.parent / "pyproject.toml").write_text("[project\n")  # broken: not a checkout, not a crash
    assert paths.find_checkout(package) is None
    (package.parent / "pyproject.toml").write_text('[project]\nname = "chemgen"\n')
    assert paths.find_checkout(package) == package.parent


def test_data_and_weights_directories(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(paths.WEIGHTS_DIR_ENV, raising=False)
    assert paths.default_data_dir() == ROOT.parent / "shared" / "data"  # beside the checkout
    assert paths.shipped_weights_dir() == ROOT / "models" / "weights"
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(paths.WEIGHTS_DIR_ENV, str(tmp_path / "weights"))
    assert paths.default_data_dir() == tmp_path / "data" and paths.shipped_weights_dir() == tmp_path / "weights"
    # installed (no checkout) and no variable: a clear error, never a folder inside site-packages
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    assert paths.default_data_dir() == tmp_path / "data"
    monkeypatch.delenv(paths.DATA_DIR_ENV)
    monkeypatch.delenv(paths.WEIGHTS_DIR_ENV)
    with pytest.raises(paths.DataDirError, match="set CHEMGEN_DATA_DIR .*--data-dir"):
        paths.default_data_dir()
    with pytest.raises(FileNotFoundError, match="set CHEMGEN_WEIGHTS_DIR"):  # callers catching the old error still do
        paths.shipped_weights_dir()

"""Where chemgen finds things outside its own package: local state, the shared data, the shipped weights.

* ``$CHEMGEN_HOME`` (default ``./.chemgen``): datasets, MLflow's SQLite store and artifacts, caches, packs.
* The raw data (`default_data_dir`): ``$CHEMGEN_DATA_DIR``, else ``../shared/data`` beside a source checkout.
* The shipped model lineages (`shipped_weights_dir`): ``$CHEMGEN_WEIGHTS_DIR``, else ``models/weights`` in
  a source checkout.

An installed chemgen (``pip install .``, a wheel, a container image) has no checkout around it, so it never
guesses a folder relative to site-packages: it asks for the environment variable (or ``--data-dir`` /
``--model``) and says so in a `ChemgenError`. Model configs are package data (`chemgen.config`), found in
both cases.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path

from chemgen.errors import ChemgenError

HOME_ENV = "CHEMGEN_HOME"
DATA_DIR_ENV = "CHEMGEN_DATA_DIR"
WEIGHTS_DIR_ENV = "CHEMGEN_WEIGHTS_DIR"


class DataDirError(ChemgenError, FileNotFoundError):
    """No data directory (or weights directory) can be found: chemgen runs outside a source checkout and the
    environment variable that names it is not set."""


def chemgen_home() -> Path:
    """Datasets, MLflow's SQLite store and artifacts, caches and packs live under this folder."""
    return Path(os.environ.get(HOME_ENV, ".chemgen")).resolve()


@lru_cache(maxsize=1)
def source_checkout() -> Path | None:
    """The project root when chemgen is imported from a source checkout (or an editable install), else None."""
    return find_checkout(Path(__file__).resolve().parent)


def find_checkout(package_dir: Path) -> Path | None:
    """``package_dir``'s parent if it is chemgen's project root: a ``pyproject.toml`` there names the project
    ``chemgen``. An installed package's parent is site-packages (or a --target folder), which has none."""
    root = package_dir.parent
    try:
        meta = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return root if meta.get("project", {}).get("name") == "chemgen" else None


def default_data_dir() -> Path:
    """``$CHEMGEN_DATA_DIR`` if set; else ``../shared/data`` beside the source checkout; else `DataDirError`.

    Callers that accept an explicit data directory (``--data-dir``) use it first and call this only
    without one. Whether the folder holds the expected files is for the reader to say (it names the file).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None:
        return checkout.parent / "shared" / "data"
    raise DataDirError(f"no data directory: chemgen is installed, not run from a source checkout, so there is no "
                       f"../shared/data to default to; set {DATA_DIR_ENV} to the folder holding mp_20/ etc. "
                       f"(or pass --data-dir)")


def shipped_weights_dir() -> Path:
    """The folder of shipped model lineages (``<model>-<config>/``): ``$CHEMGEN_WEIGHTS_DIR`` if set, else the
    checkout's ``models/weights``; else `DataDirError` (the wheel does not carry weights: they are
    tens of MB of committed shards)."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / "models" / "weights"
    raise DataDirError(f"no shipped model weights: chemgen is installed without them (they live in a source "
                       f"checkout's models/weights); set {WEIGHTS_DIR_ENV} to such a folder, or name a model "
                       f"with --model (a lineage folder or models:/NAME@ALIAS)")

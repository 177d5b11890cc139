"""The chemgen wheel that a registered model carries, so that a fresh environment can install what it needs.

A registered version's ``requirements.txt`` names ``artifacts/chemgen-<version>-py3-none-any.whl`` (the wheel
logged beside the weights) instead of ``chemgen==<version>``, which no package index serves: ``pip install -r
requirements.txt`` in the downloaded model folder installs chemgen and resolves its dependencies from the wheel's
metadata (pyproject.toml's ranges). `chemgen_wheel` builds the wheel from the source checkout chemgen runs from,
offline and without build isolation, from a copy of the sources (a stale ``build/`` never reaches it), and keeps it
under ``$CHEMGEN_HOME/cache/wheels/`` keyed by the sources' content: registering again reuses it. An installed
chemgen has no sources to build from: then there is no wheel and the requirement stays ``chemgen==<version>``
(the team's own index must serve it).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from chemgen.errors import ChemgenError
from chemgen.paths import chemgen_home, source_checkout

SOURCES = ("pyproject.toml", "README.md", "chemgen")


class WheelError(ChemgenError, RuntimeError):
    """The chemgen wheel could not be built (pip's output says why)."""


def _sources_digest(checkout: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        path = checkout / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts and p.suffix != ".pyc")
        for file in files:
            digest.update(file.relative_to(checkout).as_posix().encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def chemgen_wheel() -> Path | None:
    """The wheel of the chemgen that runs (built once per state of its sources), or None for an installed one."""
    checkout = source_checkout()
    if checkout is None:
        return None
    import chemgen

    home = chemgen_home() / "cache" / "wheels" / f"{chemgen.__version__}-{_sources_digest(checkout)}"
    built = sorted(home.glob("chemgen-*.whl"))
    if built:
        return built[0]
    with tempfile.TemporaryDirectory(prefix="chemgen-wheel-") as scratch:
        sources = Path(scratch) / "src"
        sources.mkdir()
        for name in SOURCES:
            path = checkout / name
            if path.is_dir():
                shutil.copytree(path, sources / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, sources / name)
        dist = Path(scratch) / "dist"
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                               "--no-index", "-w", str(dist), str(sources)], capture_output=True, text=True,
                              timeout=600)
        wheels = sorted(dist.glob("chemgen-*.whl"))
        if done.returncode != 0 or not wheels:
            raise WheelError(f"building the chemgen wheel from {checkout} failed:\n{(done.stdout + done.stderr)[-2000:]}")
        home.mkdir(parents=True, exist_ok=True)
        target = home / wheels[0].name
        temporary = home / f".{wheels[0].name}.tmp"
        shutil.copy2(wheels[0], temporary)
        temporary.replace(target)   # whole or absent: a reader never sees half a wheel
        return target

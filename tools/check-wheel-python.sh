#!/usr/bin/env bash
# The wheel on another Python (3.12 where it exists; GPU machines run it): the wheel itself installs (pip enforces
# Requires-Python), every module byte-compiles, the torch-free modules import and read the packaged configs, and
# every pin of requirements.lock has a distribution for that Python (uv resolves it from the index's metadata,
# downloading no wheel). Usage: tools/check-wheel-python.sh WHEEL VERSION UV
set -euo pipefail
wheel="$1"; version="$2"; uv="$3"
python=""
for candidate in "python$version" "$(pyenv root 2>/dev/null)/versions/$version"*/bin/"python$version"; do
  if [ -x "$(command -v "$candidate" 2>/dev/null || true)" ] && "$candidate" -c 'import sys' 2>/dev/null; then
    python="$(command -v "$candidate")"; break
  fi
done
if [ -z "$python" ]; then
  echo "check-wheel: no Python $version on this machine; skipped"
  exit 0
fi
where="$(mktemp -d)"
trap 'rm -rf "$where"' EXIT
"$python" -m venv "$where/venv"
"$where/venv/bin/python" -m pip install --quiet pyyaml   # before the wheel: pip then has nothing to say of its deps
"$where/venv/bin/python" -m pip install --quiet --no-deps "$wheel"
"$where/venv/bin/python" -m compileall -q "$where"/venv/lib/python*/site-packages/chemgen > /dev/null
(cd "$where" && "$where/venv/bin/python" -c '
import yaml  # noqa: F401 - the configs are YAML
from importlib import resources
import chemgen, chemgen.datasets, chemgen.errors
assert chemgen.datasets.label_order() == ("mp20", "qm9", "mpts52", "perov5", "carbon24")
assert len([p for p in resources.files("chemgen.configs").iterdir() if p.name.endswith(".yaml")]) >= 11
')
"$uv" pip install --quiet --dry-run --no-deps --python "$where/venv/bin/python" -r requirements.lock
echo "check-wheel: Python $("$python" --version | cut -d' ' -f2): the wheel installs and compiles, its configs read, and every locked pin resolves"

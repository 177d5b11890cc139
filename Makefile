# chemgen: `make run` runs the main job, `make test` runs the test suite.
# Both create .venv and install chemgen with pinned dependencies on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch threads pinned for stable timings on small shared machines (override: make test THREADS=2).
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
export CHEMGEN_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install run test bench clean-store
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "chemgen needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	# matminer (CrystalNN / Magpie featurizers for COV-R/COV-P) pins pandas<3 in its metadata but the
	# featurizers chemgen uses run on pandas 3 (tests/scoring/test_crystals.py checks them): install it alone.
	$(PY) -m pip install --quiet --no-deps matminer==0.10.1
	@touch $@

run: install
	$(VENV)/bin/chemgen run

test: install
	$(PY) -m pytest -q

bench: install
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-store:
	rm -rf .chemgen

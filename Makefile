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

.PHONY: install run test bench clean-store spectra spectra-stop spectra-kill spectra-wheels gpu-packs
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

bench: install gpu-packs  # one thread each (a 2-core machine shared with other work); training benches read the packs
	@for f in bench/bench_*.py; do echo "== $$f"; OMP_NUM_THREADS=1 $(PY) $$f $$(grep -q -- '"--packs"' $$f && echo --packs .packs/full) || exit 1; done

clean-store:
	rm -rf .chemgen

# The xTB spectra computation, in the background (log: logs/spectra.log). It resumes where the shards in
# datasets/spectra/qm9-xtb end; commit the finished shards and manifest.json. Stop it with `make spectra-stop`.
SPECTRA_WORKERS ?= 1
UNTIL ?=
SHARD_SIZE ?=
spectra: install
	@mkdir -p logs
	setsid nohup $(VENV)/bin/chemgen data prepare qm9-spectra --workers $(SPECTRA_WORKERS) $(if $(UNTIL),--until $(UNTIL)) \
		$(if $(SHARD_SIZE),--shard-size $(SHARD_SIZE)) \
		>> logs/spectra.log 2>&1 & echo $$! > logs/spectra.pid
	@echo "spectra: started pid $$(cat logs/spectra.pid), log logs/spectra.log"

# spectra-stop: the running shards finish (minutes) and are written, then the job exits. spectra-kill: now,
# losing the running shards' work (nothing half-written either way).
spectra-stop:
	@if [ -f logs/spectra.pid ]; then kill $$(cat logs/spectra.pid) 2>/dev/null && echo "spectra: stopping after the running shard(s)"; fi

spectra-kill:
	@if [ -f logs/spectra.pid ]; then pkill -KILL -g $$(cat logs/spectra.pid) && echo "spectra: killed"; rm -f logs/spectra.pid; fi

# Python 3.12 wheels of what the GPU machine lacks for the spectra workers (README: "Spectra on the GPU machine").
spectra-wheels: install
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl tblite==0.8.0 cffi==2.1.1 pycparser==3.12 ase==3.29.0

# Tensor packs for a GPU lease (carry .packs/full; the command is in models/README.md, "Next GPU run").
gpu-packs: install
	$(VENV)/bin/chemgen train packs --model adit --config gpu-quick --out .packs/full

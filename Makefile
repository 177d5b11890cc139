# chemgen: `make run` runs the main job, `make test` runs the test suite.
# Both create .venv and install chemgen with the locked dependencies (requirements.lock) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch threads pinned for stable timings on small shared machines (override: make test THREADS=2).
THREADS ?= 1
export OMP_NUM_THREADS := $(THREADS)
export MKL_NUM_THREADS := $(THREADS)
export CHEMGEN_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install lock run test test-reliability check-wheel prefect-yaml fuzz bench clean-store spectra spectra-stop spectra-kill spectra-wheels gpu-packs diffspectra-packs
install: $(VENV)/.installed

# Exactly the lock, with --no-deps: torch 2.13.0 there matches the CPU build on disk (2.13.0+cpu) where pip looks
# there, and the CUDA libraries that PyPI's torch wheels ask for are left out of the lock (CUDA_ONLY below).
$(VENV)/.installed: pyproject.toml requirements.lock package-lock.json
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 12), "chemgen needs Python 3.11 or 3.12, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	# matminer (CrystalNN / Magpie featurizers for COV-R/COV-P) pins pandas<3 in its metadata but the
	# featurizers chemgen uses run on pandas 3 (tests/scoring/test_crystals.py checks them): installed apart.
	$(PY) -m pip install --quiet --no-deps matminer==0.10.1
	# 3Dmol.js for the web app's 3D views, from the npm package (package-lock.json pins it); never from a CDN
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

# requirements.lock from pyproject.toml's ranges, for Python 3.11 and 3.12 on every platform (uv's universal
# resolution); existing pins are kept unless UPGRADE=--upgrade.
CUDA_ONLY := cuda-bindings cuda-pathfinder cuda-toolkit nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc \
	nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse \
	nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx triton
UPGRADE ?=
lock: install
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra docs --extra bench --universal \
		--python-version 3.11.5 $(UPGRADE) $(addprefix --no-emit-package ,$(CUDA_ONLY)) -o requirements.lock

run: install
	$(VENV)/bin/chemgen run

test: install
	tools/install-test-browser.sh
	$(PY) -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Minutes of servers restarted and workers killed mid-run (needs PostgreSQL, as `chemgen services` does)
test-reliability: install
	$(PY) -m pytest -q -m reliability

# What `pip install .` gives a container image: build the wheel (offline, from a copy of the sources so that a
# stale ./build never reaches it), install it without dependencies into a folder of its own and run it from
# outside the checkout, so that only the installed package can be imported. It must find its configs, refuse
# to guess a data or weights directory, and read data and weights once CHEMGEN_DATA_DIR / CHEMGEN_WEIGHTS_DIR
# name them. About 40 s on 2 idle cores.
WHEEL_CHECK ?= $(or $(TMPDIR),/tmp)/chemgen-wheel-check
check-wheel: install
	@set -eu; T="$(WHEEL_CHECK)"; PYBIN="$(abspath $(PY))"; DATA="$(abspath $(CHEMGEN_DATA_DIR))"; \
	rm -rf "$$T"; mkdir -p "$$T/src" "$$T/run"; \
	tar --exclude=__pycache__ -cf - pyproject.toml README.md chemgen | tar -xf - -C "$$T/src"; \
	(cd "$$T/src" && "$$PYBIN" -m pip wheel --quiet --no-deps --no-build-isolation --no-index -w "$$T/dist" .); \
	"$$PYBIN" -m pip install --quiet --no-deps --no-index --target "$$T/site" "$$T"/dist/chemgen-*.whl; \
	cd "$$T/run"; \
	run() { env -u CHEMGEN_DATA_DIR -u CHEMGEN_WEIGHTS_DIR PYTHONPATH="$$T/site" CHEMGEN_HOME="$$T/home" "$$@"; }; \
	fails_with() { want="$$1"; shift; if out=$$(run "$$@" 2>&1); then echo "check-wheel: '$$*' should have failed"; exit 1; fi; \
	  case "$$out" in *"$$want"*) ;; *) echo "$$out"; echo "check-wheel: '$$*' failed without saying '$$want'"; exit 1;; esac; }; \
	run "$$T/site/bin/chemgen" --help > /dev/null; \
	run "$$PYBIN" -c 'import os, chemgen; assert chemgen.__file__.startswith(os.environ["PYTHONPATH"]), chemgen.__file__'; \
	run "$$PYBIN" -c 'from chemgen.models.specs import load_config; assert load_config("gpu-quick").name == "adit-gpu-quick"'; \
	run "$$PYBIN" -c 'from chemgen.web.app import HERE, create_app; assert (HERE / "templates" / "base.html").is_file(); create_app()'; \
	fails_with "not run from a source checkout" "$$PYBIN" -c 'from chemgen.paths import default_data_dir; default_data_dir()'; \
	fails_with "CHEMGEN_WEIGHTS_DIR" "$$PYBIN" -c 'from chemgen.paths import shipped_weights_dir; shipped_weights_dir()'; \
	fails_with "not run from a source checkout" "$$T/site/bin/chemgen" data prepare mp20 --limit 5 --store "$$T/store"; \
	fails_with "CHEMGEN_WEIGHTS_DIR" "$$T/site/bin/chemgen" sample adit --kind qm9 --n 1 --out "$$T/samples" --no-score; \
	run env CHEMGEN_DATA_DIR="$$DATA" "$$T/site/bin/chemgen" data prepare mp20 --limit 5 --store "$$T/store" > /dev/null; \
	run env CHEMGEN_WEIGHTS_DIR="$(abspath models/weights)" "$$T/site/bin/chemgen" sample adit --kind qm9 --n 1 --steps 2 \
	  --out "$$T/samples" --no-score > /dev/null; \
	test -s "$$T/samples/samples.sdf"; \
	echo "check-wheel: the installed wheel finds its configs and web templates, asks for CHEMGEN_DATA_DIR and CHEMGEN_WEIGHTS_DIR, reads both"; \
	cd "$(CURDIR)"; tools/check-wheel-python.sh "$$(ls "$$T"/dist/chemgen-*.whl)" 3.12 "$(abspath $(VENV))/bin/uv"

# prefect.yaml is generated from chemgen/flows/deploy.py (the one definition of the deployments); a test fails when
# the committed file differs from what this writes.
# Mutation fuzzing of every structure reader on real QM9 and MP-20 files (docs/guides/structures.md):
# FUZZ_N inputs per format; fails if anything crashes, hangs or is accepted beyond the record's limits.
FUZZ_N ?= 10000
fuzz: install
	$(PY) tools/fuzz_readers.py --per-format $(FUZZ_N) --out runs/fuzz

prefect-yaml: install
	$(PY) -m chemgen.flows.deploy --write-prefect-yaml prefect.yaml

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

# Python 3.12 wheels of what a machine without the chemistry stack lacks for the spectra workers
# (docs/guides/spectra.md, "On a machine without the chemistry stack").
spectra-wheels: install
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl tblite==0.8.0 cffi==2.1.1 pycparser==3.12 ase==3.29.0

# Tensor packs for a GPU machine with only torch (python -m chemgen.training.standalone --packs .packs/full).
gpu-packs: install
	$(VENV)/bin/chemgen train packs --model adit --config gpu-quick --out .packs/full

# DiffSpectra's packs for a GPU machine (models/gpu/diffspectra-ablation.sh): the training
# and validation packs of the spectra store and 300 test molecules as the elucidation benchmark's queries.
diffspectra-packs: install
	$(VENV)/bin/chemgen train packs --model diffspectra --config cpu --out .packs/diffspectra
	$(PY) -m chemgen.elucidation.benchmark queries --out .packs/diffspectra/test.pt --num 300

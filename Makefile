# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

LOCK := requirements/lock.txt
LOCK_VENV := .venv-lock
PIP_TOOLS := pip-tools==7.6.2

.PHONY: install install-torchcodec lock demo test test-unit test-slow test-zoo lint clean-demo device-wheels

install: $(STAMP)

# Every package, transitive ones included, at the version and hash of the lock (torch + torchvision too);
# --no-deps: the lock is the whole set, nothing is resolved afresh. Then the project itself, editable, built with
# the lock's setuptools (no build isolation: an isolated build would fetch whatever setuptools is newest).
$(STAMP): $(LOCK) pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate the lock from pyproject.toml's ranges + requirements/torch.in (README: "Upgrading a dependency").
# pip-compile, not uv: it resolves with pip itself, so it reads this machine's pip configuration (the local
# package index and wheel folder that hold the torch build), where uv would fetch a CUDA torch of several GB.
# Index URLs are left out of the file: they belong to the machine, not to the lock.
lock:
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q $(PIP_TOOLS)
	$(LOCK_VENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links --extra dev --extra torchcodec -o $(LOCK) pyproject.toml requirements/torch.in

# Wheels of what the GPU machine lacks for bench.gpu_step (it has torch and torchvision), at the lock's versions, into
# .device-wheels/ (git-ignored), carried there with the checkout (docs/benchmarks.md: GPU step): the pure-Python ones
# built here (pytorchvideo and fvcore are source releases), the compiled one (pyyaml) for Python 3.11-3.13.
DEVICE_PURE := pytorchvideo fvcore iopath portalocker tabulate termcolor yacs tqdm
DEVICE_BINARY := pyyaml
device-wheels: $(STAMP)
	rm -rf .device-wheels && mkdir -p .device-wheels
	$(BIN)/pip wheel -q --no-deps -w .device-wheels \
		$$(for p in $(DEVICE_PURE); do grep -E "^$$p==" $(LOCK) | cut -d' ' -f1; done)
	for v in 3.11 3.12 3.13; do $(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $$v \
		-d .device-wheels $$(for p in $(DEVICE_BINARY); do grep -E "^$$p==" $(LOCK) | cut -d' ' -f1; done); done

# Optional torchcodec decode backend (data.decoder: torchcodec): the package is in the lock; this installs the
# system FFmpeg libraries it links against (Debian 12 names; needs root). Without them the torchcodec tests skip.
install-torchcodec: $(STAMP)
	apt-get install -y -qq --no-install-recommends libavcodec59 libavformat59 libavutil57 libswscale6 \
		libavfilter8 libswresample4 libavdevice59 >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends libavcodec59 libavformat59 \
		libavutil57 libswscale6 libavfilter8 libswresample4 libavdevice59 >/dev/null)

demo: $(STAMP)
	$(BIN)/python -m workflows.train --config configs/demo.yaml --baseline

# The README's test command: tests/unit and tests/e2e (-m "not slow"; tests/conftest.py marks tests by folder).
# tests/slow, the failure-injection tests (a SIGKILLed Train worker, an MLflow server stopped mid-run, a node of the
# two-node cluster/local.sh lost mid-run), pretraining and Noisy Student resumes, a self-training round, every zoo
# model's training and published-size logits, takes ~23 min on 2 cores, over the suite's budget: `make test-slow`
# runs it; CI (.ci/run) runs both. tests/zoo (every registered model's CMPL and FixMatch through Ray Data + Ray
# Train, ~18 min) is `make test-zoo`: run it when the model zoo or the Ray worker changes; CI leaves it out for its
# 45 min budget.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# The edit-run loop: ruff and tests/unit (small tensors, generated videos; nothing starts Ray), under 2 min on 2 cores.
test-unit: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests/unit --durations=5

test-slow: $(STAMP)
	VIDSSL_CLUSTER_TESTS=1 $(BIN)/python -m pytest -q -m "slow and not zoo" --durations=10

test-zoo: $(STAMP)
	$(BIN)/python -m pytest -q -m zoo --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .

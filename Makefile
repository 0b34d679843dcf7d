# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-torchcodec demo test test-slow lint clean-demo

install: $(STAMP)

# torch and torchvision first, pinned to a matching pair (an unpinned torchvision may not import beside
# the torch build pip picks here), then the project with its test tools.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Optional torchcodec decode backend (data.decoder: torchcodec): the package and the system FFmpeg libraries it
# links against (Debian 12 names; needs root). Without it the torchcodec tests skip.
install-torchcodec: $(STAMP)
	apt-get install -y -qq --no-install-recommends libavcodec59 libavformat59 libavutil57 libswscale6 \
		libavfilter8 libswresample4 libavdevice59 >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends libavcodec59 libavformat59 \
		libavutil57 libswscale6 libavfilter8 libswresample4 libavdevice59 >/dev/null)
	$(BIN)/pip install -q -e '.[dev,torchcodec]'

demo: $(STAMP)
	$(BIN)/python -m workflows.train --config configs/demo.yaml

# CI's command. The failure-injection tests (a SIGKILLed Train worker, an MLflow server stopped mid-run) take
# ~5 min together on 2 cores, over the suite's budget: `make test-slow` runs them.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

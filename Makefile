# One entry point for people and CI. Every target sets up .venv on a fresh machine first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
MITDB  ?= ../shared/mitdb

.PHONY: bench test bench-full bench-speed lib models model model-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.train: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test,train]'
	touch $@

# The C device core as the virtual board loads it (the board also builds it on demand).
lib: $(VENV)/.installed
	$(PY) -c "from harness.virtual.core import ensure_library; print(ensure_library())"

## The main job: every shipped model on the virtual board over the bundled MIT-BIH records.
bench: $(VENV)/.installed
	$(PYTEST) tests/hil --device virtual --out out

## The test suite (unit and C core tests, recipe smoke runs, the HIL suite on the virtual board).
test: $(VENV)/.train
	$(PYTEST)

## All 48 MIT-BIH records (109,494 beats) from $(MITDB) on the virtual board.
bench-full: $(VENV)/.installed
	$(PYTEST) tests/hil --device virtual --mitdb $(MITDB) --records all --out out/full

## Link and throughput figures: line-rate bound at 921600 baud, TFLM-invoke bound, harness memory.
bench-speed: $(VENV)/.installed
	$(PY) -m harness.speed

## Retrain the shipped models from $(MITDB) (TensorFlow in the `train` extra).
models: $(VENV)/.train
	$(PY) models/cnn1d/train.py --mitdb $(MITDB) --out models/cnn1d

model: $(VENV)/.train
	$(PY) models/$(NAME)/train.py --mitdb $(MITDB) --out models/$(NAME)

clean:
	rm -rf build out

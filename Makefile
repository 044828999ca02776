# One entry point for people and CI. Every target sets up .venv on a fresh machine first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
MITDB  ?= ../shared/mitdb
LGVENV := .venv-labgrid

.PHONY: labgrid conformance bench-farm system-packages hil-board board-idle ci-summary idf-version report bench test bench-full bench-speed bench-noise bench-protocols bench-gate lib models model models-smoke models-figures clean fuzz fuzz-smoke soak

$(VENV)/.installed: pyproject.toml
	@echo "== setting up $(VENV): hil-bench and its test dependencies from PyPI (about a minute the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.train: $(VENV)/.installed
	@echo "== installing the train extra (TensorFlow, for the recipe smoke runs): a few minutes the first time"
	$(PY) -m pip install --quiet -e '.[test,train]'
	touch $@

# The C device core as the virtual board loads it (the board also builds it on demand).
lib: $(VENV)/.installed
	$(PY) -c "from harness.boards.virtual.core import ensure_library; print(ensure_library())"

## The main job: every shipped model on the virtual board over the bundled MIT-BIH records.
bench: $(VENV)/.installed
	$(PYTEST) tests/hil --device virtual --out out

## The protocol conformance suite against a board (docs/conformance.md): DEVICE=/dev/ttyUSB0 [BAUD=921600]
## [TARGET=profile for the baud, default esp32s3]; without DEVICE (or with auto) it starts a virtual board, as
## make test does.
CONFORMANCE_PORT = $(filter-out auto,$(DEVICE))
conformance: $(VENV)/.installed
	$(PYTEST) tests/conformance $(if $(CONFORMANCE_PORT),--device $(CONFORMANCE_PORT) --target $(TARGET)) \
		$(if $(BAUD),--baud $(BAUD))

## Render out/report.html and out/summary.md again from out/results.json, with trend plots per model ×
## profile from out/history.sqlite (every run appends to it). OUT=dir for another run's output directory.
OUT ?= out
report: $(VENV)/.installed
	$(PY) -m harness.report.html $(OUT)

## The test suite (unit and C core tests, recipe smoke runs, the HIL suite on the virtual board). Its HIL
## reports go to out/test, so that `make bench`'s out/ survives a test run; its gate is strict (a figure it
## cannot compare with baselines/virtual.json fails, as in CI).
test: $(VENV)/.train $(LGVENV)/.installed
	$(PYTEST) --out out/test --gate strict

## All 48 MIT-BIH records (109,494 beats) from $(MITDB) on the virtual board.
bench-full: $(VENV)/.installed
	$(PYTEST) tests/hil --device virtual --mitdb $(MITDB) --records all --out out/full

## Every shipped model against NSTDB noise (bw, ma at 24..-6 dB) over the bundled records: accuracy and
## macro-F1 against SNR, the SNR where macro-F1 falls below 90 % of clean, one line per model (~20 min).
bench-noise: $(VENV)/.installed
	$(PYTEST) tests/hil --device virtual --noise-sweep bw,ma --out out/noise

## Link and throughput figures: line-rate bound at 921600 baud, TFLM-invoke bound, harness memory.
bench-speed: $(VENV)/.installed
	$(PY) -m harness.benchmarks.speed

## Our protocol vs MLPerf Tiny's on the same throttled link (115200 and 921600 baud): beats/s and the ratio.
bench-protocols: $(VENV)/.installed
	$(PY) -m harness.benchmarks.protocols

## The gate's own cost: paired bootstrap over 48 records × 1,000 resamples plus McNemar (goal < 2 s).
bench-gate: $(VENV)/.installed
	$(PY) -m harness.gate.stats

## Retrain every model family (models/*/train.py) from $(MITDB) (TensorFlow in the `train` extra).
models: $(VENV)/.train
	@set -e; for recipe in models/*/train.py; do \
	  echo "== $$recipe"; $(PY) $$recipe --mitdb $(MITDB) --out $$(dirname $$recipe); done

## Retrain one family: make model NAME=cnn1d (its folder under models/).
model: $(VENV)/.train
	@test -f models/$(NAME)/train.py || { echo "make model NAME=<family>: one of" \
	  $$(ls models/*/train.py | cut -d/ -f2); exit 2; }
	$(PY) models/$(NAME)/train.py --mitdb $(MITDB) --out models/$(NAME)

## Every recipe in --smoke mode (bundled records, one epoch, temp dirs): what CI runs.
models-smoke: $(VENV)/.train
	@set -e; for recipe in models/*/train.py; do echo "== $$recipe --smoke"; $(PY) $$recipe --smoke; done

## Figures of the committed models that need the full database but no TensorFlow (a few minutes each):
## rr_beat with wfdb XQRS R peaks instead of annotations on DS2 (models/rr/detector.json), and ae_beat's
## ROC AUC and Se at Sp 0.90 chosen on the DS1 hold-out (models/autoencoder/roc.json). Prints the figures.
models-figures: $(VENV)/.installed
	$(PY) models/rr/detector_eval.py --mitdb $(MITDB) --out models/rr/detector.json
	$(PY) models/autoencoder/roc.py --mitdb $(MITDB) --out models/autoencoder/roc.json

## libFuzzer on the C core's frame decoder and dispatch: 10 million executions per target (needs clang:
## `apt-get install clang`). fuzz-smoke is the short run CI does (tests/test_fuzz.py).
fuzz:
	$(MAKE) -C firmware/core/fuzz fuzz

fuzz-smoke:
	$(MAKE) -C firmware/core/fuzz smoke

clean:
	rm -rf build out

## Soak: all 48 MIT-BIH records through a damaged link (1e-4 BER, 1 % frame loss) to a board that resets
## every 10,000 beats, and a board that stops answering; prints goal vs achieved (takes minutes).
soak: $(VENV)/.installed
	$(PY) -m harness.benchmarks.soak --mitdb $(MITDB)

## CI board job (.github/workflows/hil.yml, .gitlab-ci.yml, docs/ci.md): every model on the runner's board,
## strict gate. DEVICE defaults to $$HIL_DEVICE (set per runner, e.g. /dev/hil-<serial>), else auto.
TARGET ?= esp32s3
DEVICE ?= $(or $(HIL_DEVICE),auto)
hil-board: $(VENV)/.installed
	$(PYTEST) tests/hil --device $(DEVICE) --target $(TARGET) --gate strict --out out/$(TARGET)

## Leave the board idle after a job, also a cancelled one (reset, HELLO, port released).
board-idle: $(VENV)/.installed
	$(PY) -m harness.boards.idle --device $(DEVICE) --target $(TARGET)

## Append the run's Markdown summary (out/$(TARGET)/summary.md) to the CI job page.
ci-summary:
	@if [ -f out/$(TARGET)/summary.md ]; then cat out/$(TARGET)/summary.md; \
	  else echo "No summary for $(TARGET): the run stopped before writing a report (see the job log)."; \
	  fi >> "$${GITHUB_STEP_SUMMARY:-/dev/stdout}"

## The ESP-IDF version on this runner, as `idf=vX.Y.Z` (CI keys its firmware build cache on it).
idf-version:
	@v=$$(idf.py --version 2>/dev/null) || v=none; echo "idf=$${v#ESP-IDF }"

## Debian packages tests use beyond Python: clang (fuzz smoke), shellcheck (workflow lint), ser2net (labgrid
## test), chromium (the HTML report opened in a browser). apt-get as root, else through sudo; only what is missing.
SYSTEM_PACKAGES := clang shellcheck ser2net chromium
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

## Many boards: 4 throttled virtual boards' aggregate line rate vs 4 x the one-board bound, host CPU per
## verified beat with and without the reference cache (boards per core), and the full MIT-BIH from $(MITDB)
## sharded over 4 boards vs one board (wall time, merged figures identical). Takes several minutes.
bench-farm: $(VENV)/.installed
	$(PY) -m harness.benchmarks.farm --mitdb $(MITDB)

## labgrid in its own virtualenv (.venv-labgrid): it depends on pyserial-labgrid, which replaces pyserial's
## `serial` package and registers a pytest plugin, so it stays out of .venv. --device labgrid:PLACE runs its
## helper (harness/boards/lgplace.py) with this interpreter; tests/test_labgrid.py starts a coordinator with it.
labgrid: $(LGVENV)/.installed
$(LGVENV)/.installed:
	$(PYTHON) -m venv $(LGVENV)
	$(LGVENV)/bin/python -m pip install --quiet "labgrid==26.0.1"
	touch $@

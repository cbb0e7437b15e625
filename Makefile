# Convenience targets; each is a thin wrapper around a command documented in README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HANDOUT := handout_from DS_agent
# The handout's scripts run with -B: its folder is the data-science team's, never a bytecode cache.
# The artifact every target serves, as service/config.py resolves it: the environment wins.
MODEL_PATH ?= $(or $(HANDOUT_DIR),$(HANDOUT))/model.joblib
STAMP := $(VENV)/.installed-stamp
# The lock file (exact pins) shared with the Dockerfile; empty to install from the ranges alone.
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINTS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
DATA ?= ../shared/data/calories_public.csv
# Where what a target starts answers, and where the tools look: one HOST and PORT for every target
# (docs/operations.md, "Addresses"); BIND, URL and PROMETHEUS_ADDR, when set, win over them.
HOST ?= 127.0.0.1
PORT ?= 8000
PROMETHEUS_PORT ?= 9090
BIND ?= $(HOST):$(PORT)
URL ?= http://$(HOST):$(PORT)
PROMETHEUS_ADDR ?= $(HOST):$(PROMETHEUS_PORT)
SIMFLAGS ?=
BENCHFLAGS ?=
STRESSFLAGS ?=
# Debian's docker 20.10 CLI builds with BuildKit built in; a newer CLI without buildx cannot.
DOCKER ?= $(firstword $(wildcard /usr/bin/docker) docker)
IMAGE ?= calories:latest
BUILDFLAGS ?=
IMAGEFLAGS ?=

SCALEOUTFLAGS ?=
PUBLISHFLAGS ?=
ROLLOUTFLAGS ?=
QUALITYFLAGS ?=
FITQUALITYFLAGS ?=
CHALLENGERFLAGS ?=
# gunicorn's pid file, so `make rollout` knows which master to signal.
PIDFILE ?= var/gunicorn.pid

.PHONY: install prerequisites lock data train model challenger fit-quality evaluate serve validate-a simulate-stream observe scaleout publish rollout live-quality test test-fast lint soak bench stress mutation image image-size clean clean-state

install: $(STAMP)  ## create .venv, install runtime + dev dependencies and the `calories` command

$(STAMP): requirements.txt requirements-dev.txt requirements-plot.txt pyproject.toml $(CONSTRAINTS)
	@$(MAKE) --no-print-directory prerequisites
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_CONSTRAINTS) --upgrade pip
	$(BIN)/pip install -q $(PIP_CONSTRAINTS) -r requirements.txt -r requirements-dev.txt
	# The project's console command, .venv/bin/calories (editable: it runs this checkout's code).
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# What a bare Debian lacks for the venv and the compiled trees: one line that says how to get them.
PREREQUISITES := python3-venv gcc libc6-dev make
prerequisites:  ## check python3 with venv, and a C compiler; print the one command that installs what is missing
	@missing=""; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if ! command -v cc >/dev/null 2>&1; then missing="$$missing gcc libc6-dev"; \
	elif ! printf '#include <stdlib.h>\nint main(void){return 0;}\n' | cc -x c -o /dev/null - 2>/dev/null; \
		then missing="$$missing libc6-dev"; fi; \
	if [ -n "$$missing" ]; then echo "missing:$$missing; install with: sudo apt-get install -y$$missing" >&2; \
		exit 1; fi

lock:  ## re-pin constraints.txt: the newest versions requirements*.txt allow, resolved afresh
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --all --exclude setuptools; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lock-venv

data: $(STAMP)  ## regenerate the handout's deterministic data sample
	cd "$(HANDOUT)" && ../$(BIN)/python -B generate_data.py

train: $(STAMP)  ## train model.joblib + metrics.json into the handout, then fit its loss estimator and intervals
	cd "$(HANDOUT)" && ../$(BIN)/python -B train.py
	$(BIN)/calories fit-quality --model-dir "$(HANDOUT)" --handout "$(HANDOUT)"

model: $(STAMP)  ## train only if the artifact is missing, fit its quality files if they are (never over a MODEL_PATH elsewhere)
	@if test "$$(realpath -m "$(MODEL_PATH)")" != "$$(realpath -m "$(HANDOUT)/model.joblib")"; then \
		test -f "$(MODEL_PATH)" || { echo "MODEL_PATH=$(MODEL_PATH): no such file (make train writes $(HANDOUT)/model.joblib)" >&2; exit 1; }; \
	elif ! test -f "$(MODEL_PATH)"; then $(MAKE) --no-print-directory train; \
	elif ! test -f "$(HANDOUT)/quality.json"; then \
		$(BIN)/calories fit-quality --model-dir "$(HANDOUT)" --handout "$(HANDOUT)"; fi

challenger: $(STAMP)  ## a challenger folder in var/challenger: the handout's training with another seed (CHALLENGERFLAGS)
	mkdir -p var/challenger
	cd "$(HANDOUT)" && ../$(BIN)/python -B train.py --out-dir ../var/challenger --seed 7 $(CHALLENGERFLAGS)
	cp -r "$(HANDOUT)/features.py" "$(HANDOUT)/schema.json" "$(HANDOUT)/data_sample" var/challenger/

fit-quality: model  ## fit the loss estimator + interval calibration beside MODEL_PATH (quality.json, loss_estimator.ubj)
	$(BIN)/calories fit-quality $(FITQUALITYFLAGS)

evaluate: model  ## RMSLE/MAE of the model on DATA=path.csv
	$(BIN)/python -B "$(HANDOUT)/evaluate.py" --data "$(abspath $(DATA))" --model "$(MODEL_PATH)"

serve: model  ## run the service (gunicorn) on HOST:PORT (BIND wins), 127.0.0.1:8000 by default
	mkdir -p "$(dir $(PIDFILE))"
	BIND="$(BIND)" $(BIN)/gunicorn -c gunicorn.conf.py --pid "$(PIDFILE)" wsgi:app

publish: model  ## log the model (MODEL_PATH) to MLflow (MLFLOW_TRACKING_URI) and register a version
	$(BIN)/calories publish $(PUBLISHFLAGS)

rollout: $(STAMP)  ## move the running `make serve` to MODEL_URI (or ROLLOUTFLAGS="--uri models:/calories/N")
	$(BIN)/calories rollout --pidfile "$(PIDFILE)" $(ROLLOUTFLAGS)

live-quality: $(STAMP)  ## write each model version's live RMSLE, MAE and pairs of the last hour to MLflow
	$(BIN)/calories live-quality $(QUALITYFLAGS)

validate-a: model  ## in-process smoke validation, log in logs/validate_iteration_a.log
	$(BIN)/calories validate

simulate-stream: $(STAMP)  ## short simulator demo against a running `make serve`
	$(BIN)/python -m simulator --url $(URL) --data "$(HANDOUT)/data_sample/train.csv" \
		--feedback-delay 10 --cycles 3 --report reports/simulate-stream.json $(SIMFLAGS)

observe: model  ## service + Prometheus (deploy/prometheus) on loopback, URLs printed; Ctrl-C stops both
	BIND="$(BIND)" PROMETHEUS_ADDR="$(PROMETHEUS_ADDR)" $(BIN)/python -m loopback.observe

scaleout: model  ## PostgreSQL + 2 instances + nginx on loopback (state in ./var/scaleout); Ctrl-C stops all
	$(BIN)/python -m loopback.scaleout --port $(PORT) $(SCALEOUTFLAGS)

test-fast: $(STAMP)  ## the unit tier alone (in-process, under 2 minutes): the edit-test loop
	$(BIN)/python -m pytest tests/unit -q -p no:cacheprovider

test: $(STAMP)  ## full test suite and lint via tox (its environments side by side): every tier, timed
	$(BIN)/tox p -p all -o --parallel-no-spinner

lint: $(STAMP)
	$(BIN)/ruff check .

soak: $(STAMP)  ## the concurrency soak of the fault tests, 10 minutes by default
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/tox -e py3 -- tests/load/test_faults.py -k soak

bench: model  ## /predict vs a bare-Flask reference (wrk), cost breakdown, memory, /metrics scrape
	$(BIN)/python -m bench $(BENCHFLAGS)

stress: model  ## capacity at a p99 SLO and bursts, open-loop (one instance pinned to CPU 0; STRESSFLAGS="--url URL" or "--target nginx")
	$(BIN)/python -m bench.stress $(STRESSFLAGS)

image:  ## build the serving image (Dockerfile) as $(IMAGE); BUILDFLAGS="--build-arg ..." pass through
	DOCKER_BUILDKIT=1 $(DOCKER) build $(BUILDFLAGS) -t $(IMAGE) .

image-size: $(STAMP)  ## the image's budget: per-layer sizes, cold and code-only rebuilds, start, memory, stop
	DOCKER_BUILDKIT=1 $(BIN)/python -m loopback.image_size --image $(IMAGE) $(IMAGEFLAGS) -- $(BUILDFLAGS)

# The scope is pyproject.toml's [tool.mutmut]: the SQLite and PostgreSQL stores, metrics, multiproc,
# startup, secrets, the quick loader and the export; the SQL text's mutants are hand-written
# (tests/unit/test_store.py::test_each_boundary_mutant_of_the_sql_fails_its_check).
MUTATION_SECONDS ?= 1200
mutation: $(STAMP)  ## mutmut over [tool.mutmut]'s modules with their fast tests (not in CI); lists survivors
	timeout --signal=INT $(MUTATION_SECONDS) $(BIN)/mutmut run --max-children 2 || test $$? -eq 124
	$(BIN)/mutmut results

# What the project rebuilds by itself: never a store, a registry or a rollout's pointer (clean-state).
REBUILT := logs reports .tox .pytest_cache mutants *.egg-info var/prometheus var/compiled
# State someone may need: stores, the MLflow registry of the docs' recipe, the scale-out's database,
# the model cache with the rollout's pointer.
STATE := var

clean:  ## remove what the project rebuilds by itself (caches, logs, reports, tox); never stores or registries
	rm -rf $(REBUILT)

clean-state:  ## DELETE the local state under var/ (stores, MLflow registry, scale-out database, model cache): says what first
	@for path in $(STATE); do test -e "$$path" && { echo "deleting $$path:"; \
		find "$$path" -maxdepth 2 -mindepth 1 | sed 's/^/  /'; }; done; true
	rm -rf $(STATE)

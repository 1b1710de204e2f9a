# The project's verbs. `make` alone lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PIPELINE_VENV := $(VENV)/pipeline
AIRFLOW_VENV := $(VENV)/airflow
PIPELINE_BIN := $(PIPELINE_VENV)/bin
AIRFLOW_BIN := $(AIRFLOW_VENV)/bin
SERVING_VENV := $(VENV)/serving
SERVING_BIN := $(SERVING_VENV)/bin

# uv installs the venvs' packages (minutes faster than pip on a clean machine); it is pinned in
# requirements-uv.txt and lives in .venv/uv, bootstrapped with pip. uv reads no pip.conf, so every install
# is handed the sources pip would use here, read from pip's config: find-links, the index and extra indexes
# (PyPI stays the default), the constraint file and the CA bundle. unsafe-best-match is pip's rule: the
# highest version on any of them. The venvs themselves still come from `python -m venv`: uv's seed
# setuptools has no pkg_resources, which some pinned packages still import.
# --compile-bytecode: uv, unlike pip, writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (this
# CI's environment) nothing ever writes them, so every process compiled the modules it imports, every time:
# importing Airflow and the pod operator took 13.4 CPU s instead of 4.8, in each of the system tier's task
# runners. Compiling once at install costs seconds.
UV_VENV := $(VENV)/uv
UV := $(UV_VENV)/bin/uv
# One of pip's settings as `pip config list` merges its files (`pip config get` reads the user's file only),
# read once on first use: starting pip takes seconds, and targets that install nothing never pay it.
pip_config = $(if $(filter undefined,$(origin PIP_CONFIG_$(1))),$(eval PIP_CONFIG_$(1) := \
	$(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^global\.$(1)='\(.*\)'$$/\1/p")))$(PIP_CONFIG_$(1))
UV_PIP_INSTALL = $(if $(call pip_config,cert),SSL_CERT_FILE=$(call pip_config,cert)) $(UV) pip install --quiet \
	--compile-bytecode --no-config --no-python-downloads --native-tls --index-strategy unsafe-best-match \
	$(foreach dir,$(call pip_config,find-links),--find-links $(dir)) \
	$(foreach url,$(call pip_config,index-url),--default-index $(url)) \
	$(foreach url,$(call pip_config,extra-index-url),--index $(url)) \
	$(foreach file,$(wildcard $(call pip_config,constraint)),--constraint $(file))

$(UV_VENV)/.installed: requirements-uv.txt
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install --quiet -r requirements-uv.txt
	touch $@

## help: list the targets
.PHONY: help
help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## setup: create both virtualenvs (stage package; Airflow + providers) from the pinned lists
.PHONY: setup
setup: $(PIPELINE_VENV)/.installed $(AIRFLOW_VENV)/.installed

$(PIPELINE_VENV)/.installed: images/pipeline/pyproject.toml | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(PIPELINE_VENV)
	$(UV_PIP_INSTALL) --python $(PIPELINE_BIN)/python -e 'images/pipeline[test,bench]'
	touch $@

# The runtime list and the test tools (requirements-test.txt includes requirements.txt).
$(AIRFLOW_VENV)/.installed: requirements.txt requirements-test.txt requirements.lock | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(UV_PIP_INSTALL) --python $(AIRFLOW_BIN)/python -r requirements-test.txt
	touch $@

## lint: ruff format check, ruff check (AIR rules on DAGs) and mypy on the stage package
.PHONY: lint
lint: setup
	$(PIPELINE_BIN)/ruff format --check .
	$(PIPELINE_BIN)/ruff check .
	cd images/pipeline && ../../$(PIPELINE_BIN)/mypy src

## test: every tier in order (lint, stage package, DAGs/plugins, end to end, system, images), each timed; a table at the end
.PHONY: test
# What the tiers need installed first, timed together as "prerequisites": add to this list.
# The system tier runs Airflow on PostgreSQL; tests/images scans Dockerfiles, pods and manifests with checkov.
# The serving tier runs in the model server's own venv and drives Debian's chromium.
TEST_PREREQUISITES := setup postgres checkov serving-env chromium monitoring mlflow-env bytecode
# Each tier is a target test-<tier>; tests/tiers.sh runs the lanes given (space-separated) side by side, each
# lane's tiers (comma-separated) in order. A new tier is a target and a name in the lane. One lane: every tier
# already keeps both cores busy (two xdist workers, the system tier's overlapping DAG runs), and three lanes side
# by side measured slower, not faster (stage-package 12:53 beside the others against 3:44 alone).
# `make test TEST_LANES="lint,e2e system"` runs a choice, here in two lanes.
TEST_LANES := lint,stage-package,serving,dags-plugins,e2e,system,images
TEST_STARTED := $(shell date +%s)
AIRFLOW_PYTEST := PATH="$(CURDIR)/$(PIPELINE_BIN):$$PATH" $(AIRFLOW_BIN)/pytest -q
# The prerequisites install side by side (uv's cache is safe to share; the apt-get runs take turns, see
# apt_install), so a fresh machine waits for the slowest one rather than for their sum.
test:
	@$(MAKE) --no-print-directory --jobs=$(words $(TEST_PREREQUISITES)) --output-sync=target $(TEST_PREREQUISITES)
	@MAKE="$(MAKE)" bash tests/tiers.sh $(TEST_STARTED) $(TEST_LANES)

.PHONY: test-lint test-stage-package test-serving test-dags-plugins test-e2e test-system test-images
test-lint: lint
# Two xdist workers, a test file each at a time, so a module's fixtures (an MLflow server, a synth run) start once;
# in collection order, which puts the longest files first (conftest's LONGEST_FILES_FIRST).
test-stage-package: setup monitoring mlflow-env
	$(PIPELINE_BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder images/pipeline/tests
# The model server, its batcher, the try-it page and the run report in headless Chromium (skipped in the
# stage-package tier, which has no selenium). Two xdist workers, a file each at a time, in the order named
# (--no-loadscope-reorder; a worker takes the next file when its last two tests are left): test_serving first, so
# one worker trains the run's model (conftest's `trained`, once per run) and starts the one model server, while the
# other runs the MLflow UI test and then the canary tests, which wait for that model; the short files and the
# disagreeing canary go to whichever worker frees first. (xdist 3.8's loadgroup ignores xdist_group under pytest 9.2.)
test-serving: serving-env chromium mlflow-env
	$(SERVING_BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder images/pipeline/tests/test_serving.py \
		images/pipeline/tests/test_mlflow_ui_page.py images/pipeline/tests/test_serving_canary.py \
		images/pipeline/tests/test_serving_batcher.py images/pipeline/tests/test_drift_page.py \
		images/pipeline/tests/test_serving_canary_disagreement.py images/pipeline/tests/test_run_report_page.py
# Everything under tests/ but the three slow tiers: DAG policy, rendered pods, plugins (and any new folder).
test-dags-plugins: setup monitoring
	$(AIRFLOW_PYTEST) tests --ignore=tests/e2e --ignore=tests/system --ignore=tests/images
test-e2e: setup serving-env
	$(AIRFLOW_PYTEST) tests/e2e
test-system: setup postgres monitoring serving-env
	$(AIRFLOW_PYTEST) tests/system
test-images: setup checkov
	$(AIRFLOW_PYTEST) tests/images

# The repo's own modules (the stage package installed editable; plugins, DAGs, the embedded stack and the tests
# imported from the tree) compiled once, as the venvs' are (--compile-bytecode above): where
# PYTHONDONTWRITEBYTECODE is set, every stage pod and task runner would otherwise compile them again.
.PHONY: bytecode
bytecode:
	@$(PYTHON) -m compileall -q -j 0 images/pipeline/src plugins dags embedded bench tests

## demo: run the training DAG end to end on the embedded default (local Airflow + SQLite, GCS emulator, local pods)
.PHONY: demo
demo: setup monitoring mlflow-env serving-env bytecode
	$(AIRFLOW_BIN)/python -m embedded.demo

## demo-conversations: two days of conversations through the daily_conversations DAG, a re-run of day 1, then a search
.PHONY: demo-conversations
demo-conversations: setup
	$(AIRFLOW_BIN)/python -m embedded.demo_conversations

## bench: speed and memory against baselines, side by side (~20 min on 2 cores); writes bench/results.{json,md} and README's table
.PHONY: bench
bench: setup
	$(PIPELINE_BIN)/python -m bench.run

## serve: serve the demo's champion (after make demo) on 127.0.0.1:8080 with its try-it page; prints a curl line; Ctrl-C stops it
.PHONY: serve
serve: setup serving-env
	$(SERVING_BIN)/python -m embedded.serve

## serving-env: the model server's venv; kserve 0.21 caps pandas<3 and psutil<6, below the stage package's pins
.PHONY: serving-env
serving-env: $(SERVING_VENV)/.installed

# pyproject.toml's pins with requirements-serving.txt's replacing those of the same name, then the stage
# package itself without its metadata's pins (which name pandas 3). The package's editable build writes its
# egg-info into images/pipeline/src, so it waits for the stage venv's build of the same tree.
$(SERVING_VENV)/.installed: $(SERVING_VENV)/.dependencies | $(PIPELINE_VENV)/.installed
	$(UV_PIP_INSTALL) --python $(SERVING_BIN)/python --no-deps -e images/pipeline
	touch $@

$(SERVING_VENV)/.dependencies: images/pipeline/pyproject.toml images/pipeline/requirements-serving.txt \
		images/pipeline/requirements-serving-test.txt images/pipeline/serving_requirements.py | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(SERVING_VENV)
	$(PYTHON) images/pipeline/serving_requirements.py > $(SERVING_VENV)/requirements.txt
	$(UV_PIP_INSTALL) --python $(SERVING_BIN)/python -r $(SERVING_VENV)/requirements.txt
	touch $@

# apt-get update and install of the given packages (and flags), one caller at a time: `make test` runs the
# prerequisites side by side, and apt 2.6's `apt-get update` fails at once on a held lists lock
# (DPkg::Lock::Timeout makes only the install wait, for dpkg's lock), so the update + install pairs take
# turns on a lock file of ours.
apt_install = flock --wait 1800 /run/lock/privacy-pipeline-apt.lock sh -c 'apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $(1) >/dev/null'

# Debian's Prometheus (with promtool) and Pushgateway: `make airflow` and `make demo` start both on 127.0.0.1
# (embedded/monitoring.py); the alert rules' tests run promtool.
.PHONY: monitoring
monitoring:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null || \
		$(call apt_install,--no-install-recommends prometheus prometheus-pushgateway)

MLFLOW_VENV := $(VENV)/mlflow

## mlflow-env: the MLflow tracking server's venv (the full mlflow package), which `make airflow` and `make demo` start on 127.0.0.1
.PHONY: mlflow-env
mlflow-env: $(MLFLOW_VENV)/.installed

$(MLFLOW_VENV)/.installed: embedded/requirements-mlflow.txt | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(UV_PIP_INSTALL) --python $(MLFLOW_VENV)/bin/python -r embedded/requirements-mlflow.txt
	touch $@

# Debian's chromium and its WebDriver, for the try-it page's browser test.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || $(call apt_install,chromium chromium-driver)

## airflow: start a local Airflow 3 (api-server + web UI, scheduler, dag-processor, triggerer) on 127.0.0.1:8080 with PostgreSQL; Ctrl-C stops it
.PHONY: airflow
airflow: setup postgres monitoring mlflow-env
	$(AIRFLOW_BIN)/python -m embedded.services

# PostgreSQL from Debian's packages, the metadata database of `make airflow` and the system tests.
.PHONY: postgres
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || $(call apt_install,postgresql)

## image: build the stage image with buildah on a debootstrap-made Debian base (as root), run stages in it as uid 10001, print its size
.PHONY: image
image:
	bash images/build.sh

# make lock's intermediate lists live beside uv.
LOCK_VENV := $(UV_VENV)
# Hash pins for the images, compiled for Linux x86_64. The stage image runs Debian
# bookworm's python3.11 (3.11.2); the Airflow image's is newer (and its Google
# provider needs 3.11.3 or later). torch's hash is the CPU wheel's in the local
# find-links folder, the one images/build.sh mounts into the build.
LOCK_COMPILE := $(UV) pip compile --quiet --no-config --native-tls \
	--generate-hashes --python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock'
WHEELS_DIR ?= $(shell pip3 config get global.find-links 2>/dev/null)

## lock: re-pin both images' runtime dependencies with hashes (images/*/requirements.lock) after changing their lists
# The stage image's serving environment gets its own lock: the serving list under the stage lock's pins.
.PHONY: lock
lock: $(UV_VENV)/.installed
	@test -d "$(WHEELS_DIR)" || { echo "make lock: no folder with the torch CPU wheel (set WHEELS_DIR); refusing to lock a CUDA torch" >&2; exit 1; }
	$(LOCK_COMPILE) --python-version 3.11 --find-links $(WHEELS_DIR) \
		images/pipeline/pyproject.toml images/pipeline/requirements-image.in -o images/pipeline/requirements.lock
	$(LOCK_COMPILE) --python-version 3.11.7 requirements.txt -o images/airflow/requirements.lock
	$(PYTHON) images/pipeline/serving_requirements.py --image > $(LOCK_VENV)/serving.in
	$(PYTHON) images/pipeline/serving_requirements.py --constraints images/pipeline/requirements.lock \
		> $(LOCK_VENV)/serving-constraints.txt
	$(LOCK_COMPILE) --python-version 3.11 --find-links $(WHEELS_DIR) $(LOCK_VENV)/serving.in \
		--constraints $(LOCK_VENV)/serving-constraints.txt -o images/pipeline/requirements-serving.lock


CHECKOV_VENV := $(VENV)/checkov

## checkov: install checkov in a venv of its own (its pins conflict with Airflow's); tests/images runs it
.PHONY: checkov
checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed: tests/images/requirements-checkov.txt | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(UV_PIP_INSTALL) --python $(CHECKOV_VENV)/bin/python -r tests/images/requirements-checkov.txt
	touch $@


AUDIT_VENV := $(VENV)/audit

## audit: pip-audit --strict over both installed dependency sets (needs pypi.org's JSON API or api.osv.dev)
.PHONY: audit
audit: setup $(AUDIT_VENV)/.installed
	$(AUDIT_VENV)/bin/pip-audit --strict --progress-spinner off --path $(PIPELINE_VENV)/lib/python3.11/site-packages
	$(AUDIT_VENV)/bin/pip-audit --strict --progress-spinner off --path $(AIRFLOW_VENV)/lib/python3.11/site-packages

$(AUDIT_VENV)/.installed: tests/requirements-audit.txt | $(UV_VENV)/.installed
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(UV_PIP_INSTALL) --python $(AUDIT_VENV)/bin/python -r tests/requirements-audit.txt
	touch $@

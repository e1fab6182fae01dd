# Two entry points, both from a fresh clone on a fresh machine (Python 3.11, node 20, apt):
#   make demo   the example sweep through a real Jupyter kernel, on MLflow's local sqlite store
#   make test   every test: unit, integration, server API and browser (installs Chromium and PostgreSQL from apt)
# Both can be run again; both exit non-zero on failure.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
# No MLflow telemetry from test runs (this machine has no network beyond package registries).
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test venv install test-deps chromium postgresql test-main test-server test-browser test-slow check-handlers test-ts lab mlflow-ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

# The wheel build compiles the TypeScript sidebar with the pinned node toolchain (package.json).
install: venv
	$(BIN)/python -m pip install --quiet ".[demo]"

demo: install
	$(BIN)/python examples/run_sweep.py

chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

# A real PostgreSQL server behind `mlflow server` for the tests with many writers (tests/helpers/postgres.py).
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

test-deps: venv chromium postgresql
	$(BIN)/python -m pip install --quiet ".[test,demo,bench]"

test-main:
	$(PYTEST) tests -m "not slow" --ignore=tests/server --ignore=tests/browser

# pytest-jupyter's in-process server and Playwright cannot share one pytest process.
test-server:
	$(PYTEST) tests/server

test-browser:
	$(PYTEST) tests/browser -p no:playwright

test-slow:
	$(PYTEST) tests -m slow --ignore=tests/server --ignore=tests/browser

check-handlers:
	$(BIN)/python .ci/check_handlers.py

# The sidebar's TypeScript: eslint + prettier, then the jest unit tests. jlpm (JupyterLab's yarn)
# installs node_modules from yarn.lock when they are missing or out of date (a few s when not).
JLPM := PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jlpm
test-ts:
	$(JLPM) install --immutable
	$(JLPM) lint:check
	$(JLPM) test

test: test-deps check-handlers test-ts test-main test-server test-browser test-slow

lab: install
	$(BIN)/jupyter lab

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean:
	rm -rf $(VENV) node_modules lib ipython_energy/labextension ipython_energy/_version.py test-artifacts

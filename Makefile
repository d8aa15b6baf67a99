# `make test` is the one test command: locally and in CI (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test venv runtime-venv docker browser compose lint format-check typecheck imports pytest fmt clean-test-containers

test: venv docker browser compose lint format-check typecheck imports pytest

# The daemon, on the bundled Caddy unless one answers on localhost:2019 (LABELSYNC_* pass through).
# Only the runtime dependencies are installed for it; `make test` adds the test extra.
run: runtime-venv
	$(BIN)/labelsync run

venv:
	@VENV=$(VENV) scripts/ensure-venv.sh

runtime-venv:
	@VENV=$(VENV) EXTRAS= scripts/ensure-venv.sh

docker:
	@scripts/ensure-docker.sh

# Headless Chromium for the dashboard's browser test (Debian's `chromium`).
browser:
	@scripts/ensure-browser.sh

# Compose (from the venv) as Docker's plugin, and mmdebstrap: for tests/deploy/.
compose: venv
	@VENV=$(VENV) scripts/ensure-compose.sh

lint: venv
	$(BIN)/ruff check .

format-check: venv
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

# pytest's own exit status stands: 5 (no tests collected) fails the run too.
pytest: venv
	$(BIN)/pytest $(PYTEST_ARGS)

# Rewrite formatting and fix what ruff can fix (not part of `test`).
fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Remove containers left by an interrupted test run.
clean-test-containers:
	@ids="$$(docker ps -aq --filter label=io.labelsync.test-id)"; \
	if [ -n "$$ids" ]; then docker rm -f $$ids >/dev/null; fi

# Benchmarks against real dockerd and the bundled Caddy (docs/performance.md): one table
# on stdout, every figure in bench/results/. `bench` runs the quick sizes (a few minutes
# per scenario on 2 cores), `bench-full` the documented full sizes.
.PHONY: bench bench-full
bench: venv docker
	$(BIN)/python -m bench --quick

bench-full: venv docker
	$(BIN)/python -m bench --full

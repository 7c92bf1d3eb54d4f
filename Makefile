# ELSPETH on Prefect. `make demo` runs the example pipeline (with a crash and a resume);
# `make test` runs the whole test suite. Both create the environment first (uv, bootstrapped).
SHELL := /bin/bash
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_PYTHON := 3.11

UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen

.PHONY: env demo test lint bench bench-quick clean

$(UV):
	@echo "uv not found: installing it for this user"
	python3 -m pip install --user --quiet uv || (curl -LsSf https://astral.sh/uv/install.sh | sh)

# Bytecode is compiled once here: with PYTHONDONTWRITEBYTECODE set (as on these machines) every
# process would otherwise recompile its imports, about 1 s of each CLI start-up.
env: $(UV)
	UV_COMPILE_BYTECODE=1 $(UV) sync --frozen
	$(UV) run --frozen python -m compileall -q elspeth_core flows benchmarks deployments > /dev/null

demo: env
	$(RUN) python -m deployments.demo

test: env
	$(RUN) pytest -q

lint: env
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy
	$(RUN) lint-imports

# Under 15 minutes in all, set-up included, on a slow machine too: the main plan has its own time
# budget (benchmarks.run --help); the Dask step gets what is left of 870 s (its first pair of runs
# always happens; see benchmarks/dask_speedup.py).
BENCH_START := $(shell date +%s)
bench: env
	$(RUN) python -m benchmarks.run
	$(RUN) python -m benchmarks.dask_speedup --budget $$(( 870 - ($$(date +%s) - $(BENCH_START)) ))

bench-quick: env
	$(RUN) python -m benchmarks.run --quick

clean:
	rm -rf runs .elspeth examples/*/out test-artifacts

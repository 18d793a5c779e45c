PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-integration test-cluster lint bench bench-all clean

# (setup.py builds steplog's optional C extensions, steplog/_*_speedups.c, in place)
$(STAMP): pyproject.toml setup.py steplog/_otlp_speedups.c steplog/_span_speedups.c
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# aiomonitor on 127.0.0.1:20101 (web UI :20102) unless STEPLOG_MONITOR_PORT says otherwise (0: off);
# outbound HTTP (webhooks, HTTP tasks) may reach this machine unless STEPLOG_OUTBOUND_ALLOW says otherwise.
run: $(STAMP)
	STEPLOG_MONITOR_PORT=$${STEPLOG_MONITOR_PORT-20101} \
	STEPLOG_OUTBOUND_ALLOW=$${STEPLOG_OUTBOUND_ALLOW-127.0.0.1/32,::1/128,localhost} \
	$(BIN)/steplog dev

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The integration and API suites against external servers (STEPLOG_TEST_DATABASE_URL / STEPLOG_TEST_REDIS_URL).
test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration tests/api $(PYTEST_ARGS)

# Only the [cluster] runs of the tests marked redis_cluster, on a 3-master Redis Cluster
# started on loopback (or STEPLOG_TEST_REDIS_CLUSTER_URL); `make test` runs them too.
test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m redis_cluster -k "not single" tests/integration tests/chaos $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Every goal of issue 13 from one run (bench/goals.py, about 6 min on 2 cores); BENCH_ARGS
# go to bench/transitions.py (e.g. -n 800 --rounds 3). bench-all: 100,000 waits, scale and
# partitioning too (about 20-40 min).
bench: $(STAMP)
	$(BIN)/python bench/goals.py $(BENCH_ARGS)

bench-all: $(STAMP)
	$(BIN)/python bench/goals.py --full $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .steplog .pytest_cache steplog/_otlp_speedups.*.so steplog/_span_speedups.*.so

# sonic-pipeline. The two set-up commands: `make demo` (the main job) and `make test`.
# Every target installs what it needs first; nothing has to be installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
POOL   ?= all
PYTEST_ARGS ?=

.PHONY: help demo test test-fast up down status topics db worker bridge flower bench \
        bench-bridge bench-dispatch bench-engine bench-overhead bench-gpu bench-backlog \
        bench-report bench-admin-sql promtool lint clean venv

help:
	@echo "make demo          bring up the stack and render the bundled sample job end to end"
	@echo "make test          bring up the stack and run the whole test suite"
	@echo "make up|down|status  the local Kafka / Redis / PostgreSQL stack"
	@echo "make worker [POOL=all|gpu|cpu|io]   Celery workers;  make bridge;  make flower"
	@echo "make bench         benchmarks (figures and ratios against a baseline)"
	@echo "make chaos         fault scenarios on private stacks (table + bench-results/chaos.json), then the long e2e scenarios (not in make test)"

venv: $(VENV)/.installed

# torch (the gpu extra) is only imported by the gpu worker; the test suite runs the
# built-in engine on CPU, so it is installed here too.
$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,gpu]"
	touch $@

# Kafka, Redis, PostgreSQL (ops/stack.py) and MinIO, the S3-compatible store (ops/s3.py).
up: venv
	$(PY) ops/stack.py up
	$(PY) ops/s3.py up

down:
	@if [ -x $(PY) ]; then $(PY) ops/s3.py down; $(PY) ops/stack.py down; fi

status: venv
	$(PY) ops/stack.py status
	$(PY) ops/s3.py status

topics: venv
	$(PY) ops/stack.py topics

db: up
	$(PY) -m pipeline.cli db upgrade

test: db promtool
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: db promtool
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The fault scenarios' long versions, each on a private stack (tests/chaos; table on stdout,
# figures in bench-results/chaos.json), then the long versions of suite scenarios.
CHAOS_ARGS ?=
chaos: db
	$(PY) -m tests.chaos $(CHAOS_ARGS); rc=$$?; \
	    $(PY) -m pytest -m chaos $(PYTEST_ARGS) || rc=1; exit $$rc

# promtool (the alert rules' unit tests), built once from its Go module.
promtool: venv
	$(PY) ops/prometheus/promtool.py install

demo: db
	$(PY) ops/demo.py

worker: db
	$(PY) -m pipeline.cli worker --pool $(POOL)

bridge: db
	$(PY) -m bridge

flower: venv
	$(PY) -m pipeline.cli flower

# Every benchmark holds the stack lock for its whole run (tests/bench/common.py takes it
# itself; the others under flock) and leaves its figures in bench-results/ (git-ignored);
# bench-report prints the one table and writes results.json and the plots. A benchmark
# that fails is a "not run" row, and make bench still prints the others.
BENCH_LOCK := flock /tmp/sonic-stack.lock
BENCH_OUT  := bench-results

bench: db
	-$(MAKE) --no-print-directory -k bench-bridge bench-dispatch bench-engine bench-overhead \
	    bench-gpu bench-backlog bench-admin-sql
	$(PY) tests/bench/bench_report.py

bench-report: venv
	$(PY) tests/bench/bench_report.py

bench-bridge: db
	@mkdir -p $(BENCH_OUT)
	bash -o pipefail -c '$(BENCH_LOCK) $(PY) tests/bench/bench_bridge.py | tee $(BENCH_OUT)/bridge.txt'

bench-dispatch: db
	@mkdir -p $(BENCH_OUT)
	$(BENCH_LOCK) $(PY) tests/bench/bench_dispatch.py --json $(BENCH_OUT)/dispatch.json

bench-engine: venv
	@mkdir -p $(BENCH_OUT)
	$(BENCH_LOCK) $(PY) tests/bench/bench_engine.py --json $(BENCH_OUT)/media.json

bench-overhead: db
	$(PY) tests/bench/bench_overhead.py

bench-gpu: db
	$(PY) tests/bench/bench_gpu.py

bench-backlog: db
	$(PY) tests/bench/bench_backlog.py

# The queries of docs/admin-sql.md at 1,000,000 task rows (each under a second; plans kept).
bench-admin-sql: db
	@mkdir -p $(BENCH_OUT)
	$(BENCH_LOCK) $(PY) tests/bench/bench_admin_sql.py --json $(BENCH_OUT)/admin_sql.json \
	    --plans $(BENCH_OUT)/admin_sql_plans.md

lint: venv
	$(PY) -m pyflakes pipeline bridge tasks ops tests migrations
	$(PY) tests/test_layers.py

clean: down
	rm -rf .state

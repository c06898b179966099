# Tally: `make up` runs a local node on the embedded PostgreSQL, with the change stream on the
# embedded NATS broker and the in-loan monitor (`tally up --stream`; more flags in UP_ARGS:
# make up UP_ARGS='--shards 4 --nats-port 0'); `make test` runs the suite.
# Both set themselves up first (a venv in .venv with the pinned dependencies).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup up test lint typecheck pytest proto bench bench-lending chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

UP_ARGS ?=
up: $(STAMP)
	$(BIN)/tally up --stream $(UP_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy core shards client

# Two workers (pytest-xdist), each file on one worker so that module fixtures start once. The
# suite keeps both cores 78-82% busy (measured), so more workers gain little.
PYTEST_WORKERS ?= 2
# Bytecode for the tree first: where PYTHONDONTWRITEBYTECODE is set (this sandbox sets it) each
# of the ~300 python processes the suite starts would compile the modules it imports anew.
pytest: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 core shards client bench tests examples gen
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25

test: lint typecheck pytest

proto: $(STAMP)
	./scripts/gen_proto.sh

# The Locust suite: a local cluster, 100,000 customers, every scenario, report in bench/reports/.
# Its options go in BENCH_ARGS: make bench BENCH_ARGS='--scenarios transfers,hot --users 64'.
bench: $(STAMP)
	$(BIN)/python -m bench.locust.suite $(BENCH_ARGS)

# The lending scenario (bench/lending): a seeded portfolio of borrowers with planted cash-flow
# patterns through tally up, NATS, tally relay and tally monitor; precision and recall per alert
# rule, and whether the monitor keeps up. Options in LENDING_ARGS: make bench-lending
# LENDING_ARGS='--days 180 --out /tmp/lending'.
bench-lending: $(STAMP)
	$(BIN)/python -m bench.lending $(LENDING_ARGS)

# The fault campaign (bench/chaos): a cluster of real processes under bank clients and a seeded
# schedule of faults, then the history checker; report in bench/reports/chaos-SEED-TIME/ (or
# --out). Its options go in CHAOS_ARGS: make chaos CHAOS_ARGS='--duration 1800 --seed 7'.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .tally build *.egg-info

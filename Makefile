# `make run` and `make test` work on a machine with only Python 3.11: they create .venv and install.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run sale test install bench clean stop

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (or make PY=python3)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/oms migrate
	$(BIN)/oms seed-demo --if-empty
	$(BIN)/oms serve --host 127.0.0.1 --port $${OMS_PORT:-8000} --workers $${OMS_WORKERS:-2} --demo-channels

# in a second terminal while `make run` serves: a minute of Double 11 on all four channels
# (options: make sale SALE_ARGS="--seconds 120 --rate 20")
sale: $(STAMP)
	$(BIN)/oms simulate-sale $(SALE_ARGS)

# the order path's invariant tests run twice: on one Redis (the whole suite) and on a local
# three-master Redis Cluster (stampedes, duplicates, rebuild, store re-routes, webhooks)
CLUSTER_TESTS := tests/test_intake.py tests/test_store_ops.py tests/test_webhooks.py tests/test_stock_buckets.py \
                 tests/test_reconcile_scale.py

test: $(STAMP)
	OMS_TEST_REDIS_CLUSTER=1 $(BIN)/python -m pytest -q $(CLUSTER_TESTS)
	OMS_TEST_STOP_EMBEDDED=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python loadtests/routing_bench.py
	$(BIN)/python loadtests/intake_core.py
	$(BIN)/python loadtests/ingest.py --orders 20000 --concurrency 64

stop:
	$(BIN)/oms stop-embedded

clean: stop
	rm -rf .oms

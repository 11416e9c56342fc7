# libvirt-kafka-bridge — every target installs what it needs first (deploy/dev/bootstrap.sh is idempotent).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help bootstrap demo test lint typecheck unit bench soak clean

help:
	@echo "make demo    - local broker + libvirtd (test driver) + the agent + a scripted workload"
	@echo "make test    - ruff, mypy and the whole pytest suite against a real broker and libvirtd"
	@echo "make bench   - throughput/latency benchmarks; prints a table, writes bench-results/*.json"
	@echo "make soak    - the seeded random fleet soak for 300 s (BRIDGE_SOAK_SEED=N to replay a seed)"
	@echo "make lint | typecheck | unit | clean"

bootstrap:
	@bash deploy/dev/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check bridge devenv tests

typecheck: bootstrap
	$(VENV)/bin/mypy

unit: bootstrap
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test: bootstrap
	$(VENV)/bin/ruff check bridge devenv tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: bootstrap
	$(PY) -m devenv.demo

bench: bootstrap
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]' >/dev/null  # py-spy, matplotlib
	$(PY) -m tests.bench.run_all

soak: bootstrap
	BRIDGE_SOAK_SECONDS=300 $(PY) -m pytest -q -p no:cacheprovider -s tests/fleet/test_soak.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache bench-results

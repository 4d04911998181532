# The README's two commands: `make serve` and `make test`. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-unit lint bench bench-metrics clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/spendgate serve --config config.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check proxy policies pricing tests bench
	$(BIN)/mypy proxy policies pricing

bench: $(STAMP)
	$(BIN)/python -m bench.run

# Metrics API timings over 1,000,000 calls and 100,000 events in a fresh PostgreSQL database (dropped after).
bench-metrics: $(STAMP)
	$(BIN)/python -m bench.metrics

clean:
	rm -rf $(VENV) build *.egg-info spendgate.db* *.journal*

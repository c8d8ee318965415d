# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint unit integration tools kafka-fetch kafka-up kafka-down kafka-status bench sandbox clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

## Runs the main job on a local default: broker, sandbox, sample clickstream, processor, metrics.
demo: install kafka-fetch
	$(PY) -m devkit.demo

## The whole suite, as CI runs it.
test: install kafka-fetch tools lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict processor devkit

unit: install
	$(PY) -m pytest tests/unit

integration: install kafka-fetch tools
	$(PY) -m pytest tests/integration

## The pinned checkers of the deployment artifacts and alert rules, into .cache/tools/ (once).
tools: install
	$(PY) -m devkit.helm fetch helm hadolint
	$(PY) -m devkit.promtool fetch

kafka-fetch: install
	$(PY) -m devkit.kafka fetch

kafka-up: install kafka-fetch
	$(PY) -m devkit.kafka up

kafka-down: install
	$(PY) -m devkit.kafka down

kafka-status: install
	$(PY) -m devkit.kafka status

bench: install kafka-fetch
	$(PY) bench/mapping.py
	$(PY) bench/sandbox.py
	$(PY) bench/sink.py
	$(PY) bench/pipeline.py

## The TikTok-compatible sandbox on http://127.0.0.1:8080 (token: sandbox-token).
sandbox: install
	$(PY) -m processor sandbox

clean:
	-[ -x $(PY) ] && $(PY) -m devkit.kafka down
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache

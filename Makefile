# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint lock lock-upgrade lock-check unit integration soak tools kafka-fetch kafka-up kafka-down kafka-status bench sandbox clean browser image-test

install: $(VENV)/.installed

# The locked versions, hash-checked; then the project itself, which they already satisfy.
$(VENV)/.installed: pyproject.toml requirements-test.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-test.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m compileall -q processor devkit  # else, under PYTHONDONTWRITEBYTECODE, every start compiles them
	touch $@

## Runs the main job on a local default: broker, sandbox, sample clickstream, processor, metrics.
demo: install kafka-fetch
	$(PY) -m devkit.demo

## The whole suite, as CI runs it: lint, every test, then the image built and run for real.
test: install lock-check kafka-fetch tools browser lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory image-test

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict processor devkit

## Recompiles requirements.lock (the image) and requirements-test.lock (.venv) from pyproject.toml,
## keeping every current pin that still fits; lock-upgrade takes the newest allowed versions.
lock: install
	$(PY) -m devkit.lock update

lock-upgrade: install
	$(PY) -m devkit.lock update --upgrade

## Offline: the locks pin every dependency of pyproject.toml, within its range, with hashes.
lock-check: install
	$(PY) -m devkit.lock check

unit: install
	$(PY) -m pytest tests/unit

integration: install kafka-fetch tools
	$(PY) -m pytest tests/integration

## The fault suite at soak size: more records, more kill -9 rounds, longer outages.
soak: install kafka-fetch
	FAULTS_SOAK=1 $(PY) -m pytest -m faults tests/faults -s

## The image built from the Dockerfile and run for real: a Docker engine (installed and started
## when none answers, then stopped again), a stand-in base image made from Debian's packages
## (the official python image cannot be pulled here), the build, its packages against
## requirements.lock, then the tests/image/ suite on the running image. See devkit/image.py.
image-test: install kafka-fetch
	$(PY) -m devkit.image run -- $(PY) -m pytest -m image tests/image

## Debian's Chromium and chromedriver for the browser tests (apt-get when missing: root, or sudo -n).
browser: install
	$(PY) -m devkit.browser ensure

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
	$(PY) bench/e2e.py

## The TikTok-compatible sandbox on http://127.0.0.1:8080 (token: sandbox-token).
sandbox: install
	$(PY) -m processor sandbox

clean:
	-[ -x $(PY) ] && $(PY) -m devkit.kafka down
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache

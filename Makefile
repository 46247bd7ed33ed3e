# wschat: `make run` starts the server on http://127.0.0.1:8080, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8080
STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast lint typecheck certs clean soak conformance

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Editable install in "compat" mode: the default (strict-less) editable mode of a flat
# layout hides twisted/plugins/ from twistd.
$(VENV)/.installed: $(PY) setup.cfg setup.py pyproject.toml wschat/server/_sendmany.c
	$(PY) -m pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(STAMP): $(PY) setup.cfg setup.py pyproject.toml wschat/server/_sendmany.c
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(VENV)/bin/twistd -n wschat --port $(PORT)

test: $(STAMP)
	$(VENV)/bin/ruff check wschat tests twisted docs/examples bench
	$(VENV)/bin/ruff format --check wschat tests twisted docs/examples bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

# The edit-test loop: the chat domain and the adapters in memory (the top-level
# tests/test_*.py), without twistd or a browser (the store and roster contract suites start one
# redis-server for the Redis engine); seconds, not minutes. `make test`
# is still the whole suite, and what CI runs.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m 'not e2e' tests/test_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check wschat tests twisted docs/examples bench
	$(VENV)/bin/ruff format --check wschat tests twisted docs/examples bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

certs: $(VENV)/.installed
	$(PY) -m wschat.certs certs/

clean:
	rm -rf $(VENV) build *.egg-info wschat/*.so wschat/*/*.so .pytest_cache .mypy_cache .ruff_cache tests/artifacts
	find . -name dropin.cache -delete

# The Autobahn|Testsuite (Python 2.7) against the real server; report in tests/artifacts/.
conformance: $(STAMP)
	bash tests/conformance/setup.sh
	$(PY) tests/conformance/run.py --twistd $(VENV)/bin/twistd

include bench/Makefile.inc

# The soak: 1,000 clients for 10 minutes; e.g. SOAK_ARGS="--clients 200 --duration 60".
soak: $(STAMP)
	$(PY) -m tests.soak.soak $(SOAK_ARGS)

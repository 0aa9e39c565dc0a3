# Everything a fresh machine needs: `make demo` runs the pipeline end to end, `make test` the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: setup demo test test-all stack-up stack-down clean

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/icuwatch demo --json

test: setup
	$(PY) -m pytest

test-all: setup
	ICUWATCH_SLOW=1 $(PY) -m pytest

stack-up: setup
	$(VENV)/bin/icuwatch stack up

stack-down: setup
	$(VENV)/bin/icuwatch stack down

clean: stack-down
	rm -rf var

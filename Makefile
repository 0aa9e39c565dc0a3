# Everything a fresh machine needs: `make demo` runs the pipeline end to end, `make test` the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3

.PHONY: setup lint demo test test-all stack-up stack-down clean

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/icuwatch demo --json

# The folders are mapped onto one package (pyproject's package-dir), which import-linter and mypy
# cannot follow through the editable install: both read a copy laid out as the installed package.
LINT_TREE := var/lint
FOLDERS = $(shell $(SYSTEM_PYTHON) -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["package-dir"]; print(" ".join(f for p, f in d.items() if p != "icuwatch"))')
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)/icuwatch && cp icuwatch/__init__.py $(LINT_TREE)/icuwatch/
	for f in $(FOLDERS); do cp -r $$f $(LINT_TREE)/icuwatch/$$f; done
	cd $(LINT_TREE) && PYTHONPATH=. $(abspath $(VENV))/bin/lint-imports $(CURDIR)/pyproject.toml
	cd $(LINT_TREE) && MYPYPATH=. $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml

test: setup lint
	$(PY) -m pytest

test-all: setup lint
	ICUWATCH_SLOW=1 $(PY) -m pytest

stack-up: setup
	$(VENV)/bin/icuwatch stack up

stack-down: setup
	$(VENV)/bin/icuwatch stack down

clean: stack-down
	rm -rf var

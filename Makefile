# Two commands on a fresh machine: `make run` (the service) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test ci clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[server,test]'
	touch $(STAMP)

## Web (gunicorn + whitenoise) and a qcluster worker in the foreground; Ctrl-C stops both.
run: $(STAMP)
	$(BIN)/python -m project.serve

## Lint and format check (ruff), then the test suite (unit, API and live end-to-end tests).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) var build *.egg-info

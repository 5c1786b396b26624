#!/usr/bin/env bash
# Fault injection against the live stack (real qcluster + fake upstream): SIGKILL and
# SIGTERM of the workers, upstream errors and outages, cancel, expiry, rate limits.
# `make test` leaves these out (pyproject addopts: -m "not fault"); the -m here wins.
# Each test prints its figures (-s) and merges them into $FAULT_FIGURES_PATH.
set -euo pipefail
export FAULT_FIGURES_PATH="${FAULT_FIGURES_PATH:-/tmp/fault_figures.json}"
run_pytest .venv/bin/python -m pytest -m fault -v -s tests/test_fault.py

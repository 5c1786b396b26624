#!/usr/bin/env bash
# The customer's acceptance suite, unmodified, against the live stack (fake upstream).
set -euo pipefail
run_pytest .venv/bin/python -m pytest -v -p no:django -p tests.conformance_plugin ../shared/conformance/test_batches.py

#!/usr/bin/env bash
# Real inference: install the `local` extra the way `make run` does (llama-cpp-python
# is compiled from source on a machine that has not built it before, ~6-10 min on
# 2 cores; pip caches the wheel), then the real-model e2e tests (chat, completions and
# embeddings batches; `make run` + the README's quick start) and the customer's acceptance
# suite, unmodified, with the local SmolLM2-135M-Instruct as the upstream.
set -euo pipefail
install_log=var/local-model-install.log
if ! .venv/bin/python -c "from project.local_model import ensure_installed; ensure_installed('$install_log')"; then
  [ -f "$install_log" ] && tail -n 80 "$install_log"
  exit 1
fi
run_pytest .venv/bin/python -m pytest -v -m realmodel tests/test_real_model.py
CONFORMANCE_LOCAL_MODEL=1 run_pytest .venv/bin/python -m pytest -v -p no:django -p tests.conformance_plugin ../shared/conformance/test_batches.py

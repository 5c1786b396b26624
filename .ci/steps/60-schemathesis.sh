#!/usr/bin/env bash
# schemathesis against the live server (gunicorn + qcluster + fake upstream): no 5xx and
# no response outside the OpenAPI schema served at /v1/openapi.json (tests/test_schema.py).
# schemathesis gets a virtualenv of its own under var/ (git-ignored), so its pytest plugin
# and pins stay out of the project's. Python 3.12 when there is one: hypothesis trips over
# an ast bug of Python 3.11.
set -euo pipefail

python=""
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python "$(command -v python3.12 || true)"; do
  if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    python=$candidate
  fi
done
python=${python:-$(.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3}

venv="var/schemathesis-$("$python" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q 'schemathesis>=4.32,<5'
fi

SCHEMATHESIS="$PWD/$venv/bin/schemathesis" .venv/bin/python -m pytest -v -s -m live tests/test_schema.py -k schemathesis

#!/usr/bin/env bash
# The wheel in a fresh Django site, set up exactly as README.md ("Add to an existing Django site") says, running a
# batch end to end with the SDK: Python 3.11 + Django 5.2, then Python 3.12 + Django 6.x.
# The fresh virtualenvs install from PyPI (through pip's cache).
set -euo pipefail

python312=""
for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python "$(command -v python3.12 || true)"; do
  if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    python312=$candidate
  fi
done
if [ -z "$python312" ]; then
  echo "Python 3.12 is needed for the Django 6 run (e.g. pyenv install 3.12)." >&2
  exit 1
fi

PACKAGING_DJANGO='django>=5.2,<6' .venv/bin/python -m pytest -v -m packaging tests/test_packaging.py
PACKAGING_PYTHON="$python312" PACKAGING_DJANGO='django>=6,<7' .venv/bin/python -m pytest -v -m packaging tests/test_packaging.py

#!/usr/bin/env bash
# The operator console driven in headless Chromium: Debian's chromium package
# plus Playwright for Python (no `playwright install`: it uses /usr/bin/chromium).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
.venv/bin/python -m pip install -q -e '.[browser]'
# Both prerequisites present, so the test cannot quietly skip here.
test -x /usr/bin/chromium
.venv/bin/python -c "import playwright.sync_api"
run_pytest .venv/bin/python -m pytest -v -m browser tests/test_admin_browser.py

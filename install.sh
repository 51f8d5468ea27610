#!/usr/bin/env bash
# Installs everything Tunesmith needs into a virtual environment: .venv beside this file, or $TUNESMITH_VENV.
# As root on Debian/Ubuntu (CI, containers) it also installs Chromium and a CJK font for the browser tests;
# elsewhere those tests are skipped unless Chromium is already installed.
set -euo pipefail
cd "$(dirname "$0")"
venv=${TUNESMITH_VENV:-.venv}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -r requirements.txt
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq chromium fonts-noto-cjk >/dev/null
fi

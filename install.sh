#!/usr/bin/env bash
# Installs everything Tunesmith needs into a virtual environment: .venv beside this file, or $TUNESMITH_VENV.
set -euo pipefail
cd "$(dirname "$0")"
venv=${TUNESMITH_VENV:-.venv}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -r requirements.txt

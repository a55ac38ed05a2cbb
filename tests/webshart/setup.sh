#!/usr/bin/env bash
# Creates the Python 3.12 venv with the real webshart 0.6.0 for the index tests.
#   WS_VENV (default tests/webshart/../../.venv-webshart) names the venv folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${WS_VENV:-$here/../../.venv-webshart}"
source "$here/../python312.sh"
py=$(python312 "webshart 0.6.0")
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import webshart; print("webshart", webshart.__version__, "in", "'"$venv"'")'

#!/usr/bin/env bash
# Creates the Python 3.12 venv with the real webshart 0.6.0 for the index tests.
#   WS_VENV (default tests/webshart/../../.venv-webshart) names the venv folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${WS_VENV:-$here/../../.venv-webshart}"
py=""
for cand in ${PYTHON312:-} python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
  # A pyenv shim may exist and still fail: take the first that runs.
  if "$cand" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then py="$cand"; break; fi
done
if [ -z "$py" ]; then
  echo "setup.sh: python3.12 not found (webshart 0.6.0 needs Python >= 3.12); set PYTHON312" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import webshart; print("webshart", webshart.__version__, "in", "'"$venv"'")'

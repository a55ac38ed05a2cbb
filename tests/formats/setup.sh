#!/usr/bin/env bash
# Creates the Python 3.12 venv with the real readers of --index-format's formats:
# DALI 2.4.0 (nvidia-dali-cuda120; its webdataset reader runs in a CPU-only pipeline) and
# wids 0.1.11. FMT_VENV (default .venv-formats at the repo root) names the venv folder.
# wids imports torch.distributed at import time; the tests give it a stub module instead of
# torch (conftest.py). megatron-energon needs the real torch: setup_energon.sh (opt-in).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${FMT_VENV:-$here/../../.venv-formats}"
source "$here/../python312.sh"
py=$(python312 "DALI and wids")
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip() { "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"; }
pip -r "$here/requirements.txt"
"$venv/bin/python" -c 'import nvidia.dali; print("dali", nvidia.dali.__version__)'

#!/usr/bin/env bash
# Opt-in (SHARDPREP_ENERGON=1): a Python 3.12 venv with megatron-energon 7.4.1 and torch,
# for tests/formats/test_energon.py. EN_VENV (default .venv-energon at the repo root) names
# the venv folder. TORCH_SITE=<a Python 3.12 site-packages with torch> (e.g. the SimpleTuner
# venv's) reuses that torch through a .pth file instead of installing one from PyPI.
# Measured (2026-12-06): torch from PyPI 3 min 6 s, 5.7 GB; with TORCH_SITE 50 s, 101 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${EN_VENV:-$here/../../.venv-energon}"
source "$here/../python312.sh"
py=$(python312 "megatron-energon")
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
if [ -n "${TORCH_SITE:-}" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Appended last on sys.path: the venv's own packages win, torch comes from TORCH_SITE.
  echo "$TORCH_SITE" > "$site/zz-torch-site.pth"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check megatron-energon==7.4.1 pytest pyarrow pillow
"$venv/bin/python" -c 'import megatron.energon, torch; print("energon", megatron.energon.__version__, "torch", torch.__version__)'

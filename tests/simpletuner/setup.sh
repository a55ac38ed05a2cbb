#!/usr/bin/env bash
# Creates the Python 3.12 venv with the real SimpleTuner for tests/simpletuner (several GB:
# torch). Idempotent: a venv that already holds requirements.txt + constraints.txt is left alone.
#
#   ST_VENV     where the venv goes (default: .venv-simpletuner at the repository root)
#   ST_PYTHON   the Python 3.12 to build it with (default: python3.12 on PATH, else pyenv's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${ST_VENV:-$repo/.venv-simpletuner}"
req="$here/requirements.txt"
stamp="$venv/.shardprep-requirements.sha256"
want="$(cat "$req" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
    echo "simpletuner venv up to date: $venv"
    exit 0
fi

find_python() {  # the first candidate that really runs Python 3.12 (pyenv shims may not)
    local c
    for c in "${ST_PYTHON:-}" "$(command -v python3.12 || true)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if [[ -n "$c" && -x "$c" ]] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$c"
            return
        fi
    done
}

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
    python="$(find_python)"
    if [[ -z "$python" ]]; then
        echo "setup.sh: simpletuner 4.x needs Python 3.12 and none was found; set ST_PYTHON to one" >&2
        exit 1
    fi
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" -c "$here/constraints.txt"
echo "$want" > "$stamp"
echo "simpletuner venv ready in $(( $(date +%s) - start ))s: $venv ($(du -sh "$venv" | cut -f1))"

# Sourced by the setup scripts of the tests that need Python 3.12 (webshart, formats, energon):
# python312 WHAT prints the first Python >= 3.12 that runs (PYTHON312, python3.12 on PATH, then
# pyenv's), or says WHAT needs it and returns 1. A pyenv shim may exist and still fail.
python312() {
  local cand
  for cand in ${PYTHON312:-} python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    if "$cand" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
      echo "$cand"
      return 0
    fi
  done
  echo "python3.12 not found ($1 needs Python >= 3.12); set PYTHON312" >&2
  return 1
}

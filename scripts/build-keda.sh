#!/usr/bin/env bash
# Builds the real KEDA for the end-to-end tests: its operator and its metrics API server (cmd/operator and
# cmd/adapter of github.com/kedacore/keda/v2, pinned in tests/k8s/build/keda), and copies its CRDs and RBAC
# manifests out of the module, into a cache outside the clone, so a warm run rebuilds nothing. Prints the KEDA
# directory (bin/, crds/ and rbac/ under it). Needs Go and the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

KEDA_VERSION=2.21.0
CACHE=${KAPA_CACHE:-$HOME/.cache/kapa}
KEDA_DIR=$CACHE/keda-v$KEDA_VERSION
BIN=$KEDA_DIR/bin
MODULE=github.com/kedacore/keda/v2

if [[ -x $BIN/keda-operator && -x $BIN/keda-adapter && -d $KEDA_DIR/crds && -d $KEDA_DIR/rbac ]]; then
  echo "$KEDA_DIR"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "build-keda: Go is not installed; install Go (https://go.dev/doc/install or Debian golang)" >&2
  exit 3
fi

started=$SECONDS
mkdir -p "$BIN"
ldflags="-s -w -X $MODULE/version.Version=$KEDA_VERSION"
# Each binary is built to a temporary name and renamed, so an interrupted build never leaves a partial file
# that the next run would take for a finished one.
for cmd in operator adapter; do
  if [[ ! -x $BIN/keda-$cmd ]]; then
    echo "build-keda: building keda-$cmd v$KEDA_VERSION (cold: the operator takes ~12-15 min on 2 cores)" >&2
    (cd tests/k8s/build/keda &&
      CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/keda-$cmd.tmp" "$MODULE/cmd/$cmd")
    mv "$BIN/keda-$cmd.tmp" "$BIN/keda-$cmd"
  fi
done
# The manifests the tests install as they are: the CRDs, and the ServiceAccount, roles and bindings KEDA's own
# deployment gives its operator and metrics API server. Copied (without the read-only module cache's modes)
# to a temporary directory, then renamed.
if [[ ! -d $KEDA_DIR/crds || ! -d $KEDA_DIR/rbac ]]; then
  source_dir=$(cd tests/k8s/build/keda && go list -m -f '{{.Dir}}' "$MODULE")/config
  staging=$KEDA_DIR/manifests.tmp
  rm -rf "$staging" "$KEDA_DIR/crds" "$KEDA_DIR/rbac"
  mkdir -p "$staging/crds" "$staging/rbac"
  cp --no-preserve=mode "$source_dir"/crd/bases/*.yaml "$staging/crds/"
  cp --no-preserve=mode "$source_dir/service_account/service_account.yaml" "$staging/rbac/"
  for part in rbac metrics-server; do  # both name their files role.yaml and role_binding.yaml
    for file in role role_binding; do
      cp --no-preserve=mode "$source_dir/$part/$file.yaml" "$staging/rbac/${part/rbac/operator}-$file.yaml"
    done
  done
  mv "$staging/crds" "$staging/rbac" "$KEDA_DIR/"
  rmdir "$staging"
fi

echo "build-keda: done in $((SECONDS - started)) s" >&2
echo "$KEDA_DIR"

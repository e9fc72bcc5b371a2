#!/usr/bin/env bash
# Builds the real Kubernetes control plane for the end-to-end tests: kube-apiserver, kube-controller-manager,
# kube-scheduler (from tests/k8s/build, pinned there), etcd and Prometheus (tests/k8s/build/*) and Helm, into a cache
# outside the clone, so a warm run rebuilds nothing. Prints the bin directory. Needs Go and the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=v1.36.3
HELM_VERSION=v3.22.0
CACHE=${KAPA_CACHE:-$HOME/.cache/kapa}
BIN=$CACHE/k8s-$K8S_VERSION/bin
mkdir -p "$BIN"

if ! command -v go >/dev/null; then
  echo "build-k8s: Go is not installed; install Go (https://go.dev/doc/install or Debian golang) to run the Kubernetes tests" >&2
  exit 3
fi

started=$SECONDS
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# Each binary is built to a temporary name and renamed, so an interrupted build never leaves a partial file
# that the next run would take for a finished one.
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  if [[ ! -x $BIN/$cmd ]]; then
    echo "build-k8s: building $cmd $K8S_VERSION (cold: several minutes)" >&2
    (cd tests/k8s/build && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  fi
done
if [[ ! -x $BIN/etcd ]]; then
  # The version is pinned in tests/k8s/build/etcd/go.mod.
  echo "build-k8s: building etcd" >&2
  (cd tests/k8s/build/etcd && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
fi
if [[ ! -x $BIN/prometheus ]]; then
  # Debian's prometheus is built without Kubernetes service discovery; this one has only that discovery.
  echo "build-k8s: building prometheus" >&2
  (cd tests/k8s/build/prometheus && CGO_ENABLED=0 go build -trimpath -tags "remove_all_sd enable_kubernetes_sd" \
    -ldflags "-s -w" -o "$BIN/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus)
  mv "$BIN/prometheus.tmp" "$BIN/prometheus"
fi
if [[ ! -x $BIN/helm ]]; then
  echo "build-k8s: building helm $HELM_VERSION" >&2
  rm -rf "$BIN/.helm"
  # Offline `helm template`/`lint` assume the tested Kubernetes version (else 1.20) unless --kube-version.
  helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  GOBIN=$BIN/.helm CGO_ENABLED=0 go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$BIN/.helm/helm" "$BIN/helm"
  rmdir "$BIN/.helm"
fi
echo "build-k8s: done in $((SECONDS - started)) s" >&2
echo "$BIN"

#!/usr/bin/env bash
# Builds Thanos (sidecar and query, one binary) for benchmarks.sharded_prometheus: the scaler's queries through
# Thanos Query over hashmod-sharded Prometheus servers. Built inside Thanos's own module (from the Go module
# proxy), so its replace directives and go.sum apply, into a cache outside the clone. Prints the binary's
# path. v0.42.4 is the newest whose go directive the Go served here (1.26.8) accepts. Not part of `make test`:
# the benchmark is run by hand.
set -euo pipefail

THANOS_VERSION=0.42.4
TAGS="netgo slicelabels"
CACHE=${KAPA_CACHE:-$HOME/.cache/kapa}
BIN=$CACHE/thanos-v$THANOS_VERSION/bin

if [[ -x $BIN/thanos ]]; then
  echo "$BIN/thanos"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "build-thanos: Go is not installed; install Go (https://go.dev/doc/install or Debian golang)" >&2
  exit 3
fi
started=$SECONDS
module_dir=$(go mod download -json "github.com/thanos-io/thanos@v$THANOS_VERSION" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$BIN"
echo "build-thanos: building thanos v$THANOS_VERSION (cold: several minutes on 2 cores)" >&2
# To a temporary name, renamed when done: an interrupted build never leaves a file taken for a finished one.
# The build tags of its release builds (.promu.yml): slicelabels is the label layout its zero-copy casts
# assume; without it the sidecar panics marshalling its first gRPC answer.
(cd "$module_dir" && CGO_ENABLED=0 go build -tags "$TAGS" -trimpath -ldflags "-s -w" -o "$BIN/thanos.tmp" ./cmd/thanos)
mv "$BIN/thanos.tmp" "$BIN/thanos"
echo "build-thanos: done in $((SECONDS - started)) s" >&2
echo "$BIN/thanos"

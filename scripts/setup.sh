#!/usr/bin/env bash
# Installs what Kapa needs on a fresh Debian machine (run as root, or with sudo available): Debian packages
# (Prometheus, wrk) and a virtualenv in .venv with Kapa and its test dependencies. Safe to run again: it
# skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(prometheus wrk iproute2 openssl)
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    echo "setup: need root (or sudo) to install Debian packages: ${missing[*]}" >&2
    echo "setup: install them by hand (apt-get install ${missing[*]}) and run this again" >&2
    exit 1
  fi
  SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian package starts no daemon inside a container, but where systemd runs it would: Kapa runs its own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  echo "setup: note: a system Prometheus is running on :9090; Kapa's local mode picks its own port"
fi

stamp=.venv/.kapa-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  echo "$want" >"$stamp"
fi

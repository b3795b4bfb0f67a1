#!/usr/bin/env bash
# Make a real `prometheus` server binary available (for tests/test_prometheus_e2e.py) and print its
# path. Idempotent: an existing binary ($PROMETHEUS, then PATH, then Debian's path) is reused;
# otherwise Debian's package (2.42 on bookworm) is installed. Only the binary is used: the test
# starts it itself with a temp config and storage, bound to loopback, so the package's service
# (if the machine runs one) is not needed.
set -euo pipefail

find_binary() {
  for candidate in "${PROMETHEUS:-}" "$(command -v prometheus 2>/dev/null || true)" /usr/bin/prometheus; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if bin=$(find_binary); then
  echo "$bin"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "get-prometheus.sh: no prometheus binary and no apt-get; set PROMETHEUS=/path/to/prometheus" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
{
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus
} >&2
bin=$(find_binary) || { echo "get-prometheus.sh: prometheus still missing after apt-get" >&2; exit 1; }
echo "$bin"

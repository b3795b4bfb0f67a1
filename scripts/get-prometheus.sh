#!/usr/bin/env bash
# Make a real `prometheus` server binary available (for tests/test_prometheus_e2e.py) and print its
# path. Nothing is installed system-wide and nothing is left running: Debian's package (2.42 on
# bookworm) is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
# .tools/prometheus/, the binary linked as .tools/bin/prometheus. (`apt-get install` would also
# create a system user and enable a prometheus systemd service.) The test starts the binary
# itself, with a temp config and storage, bound to loopback, and stops it.
#
# Idempotent: $PROMETHEUS, when set, wins; then an unpacked .tools/bin/prometheus is reused.
# `apt-get download` needs package lists; on a fresh machine (a container image ships none) the
# lists are fetched into a temp dir with `apt-get update` pointed there, so no root is needed
# and the system's own apt state is untouched. Without apt-get, a `prometheus` on PATH is used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin/prometheus"

if [[ -n "${PROMETHEUS:-}" ]]; then
  [[ -x "$PROMETHEUS" ]] || { echo "get-prometheus.sh: PROMETHEUS=$PROMETHEUS is not executable" >&2; exit 1; }
  echo "$PROMETHEUS"
  exit 0
fi
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  if found=$(command -v prometheus 2>/dev/null); then
    echo "$found"
    exit 0
  fi
  echo "get-prometheus.sh: no apt-get and no prometheus on PATH; set PROMETHEUS=/path/to/prometheus" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# A private apt state: its own lists and caches in the temp dir (the system's sources.list is
# only read). Used when the system's lists do not know the package (none fetched yet).
APT_DIR="$WORK/apt"
PRIVATE=(-o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
  -o "Dir::State::Status=$WORK/status" -o "Debug::NoLocking=1")

download() { (cd "$WORK" && apt-get -q "$@" download prometheus) >&2; }

if ! download 2>/dev/null; then
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  : >"$WORK/status"
  apt-get -qq "${PRIVATE[@]}" update >&2
  download "${PRIVATE[@]}"
fi
deb=$(ls "$WORK"/prometheus_*.deb)
rm -rf "$TOOLS/prometheus"
mkdir -p "$TOOLS/prometheus" "$TOOLS/bin"
dpkg-deb -x "$deb" "$TOOLS/prometheus"
ln -sfn ../prometheus/usr/bin/prometheus "$BIN"
"$BIN" --version >&2
echo "$BIN"

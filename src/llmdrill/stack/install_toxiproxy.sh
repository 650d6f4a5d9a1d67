#!/usr/bin/env bash
# Builds the real Toxiproxy server with `go install` at a pinned version into .stack/bin.
# Idempotent: reuses a binary of the same version.
set -euo pipefail
repo="${LLMDRILL_REPO:-$(pwd)}"
stack="${LLMDRILL_STACK_DIR:-$repo/.stack}"
version="${LLMDRILL_TOXIPROXY_VERSION:-v2.12.0}"
bin="$stack/bin/toxiproxy-server-$version"
if [[ -x "$bin" ]]; then echo "toxiproxy $version already built: $bin"; exit 0; fi
command -v go >/dev/null || { echo "go is required to build toxiproxy (https://go.dev/dl/)" >&2; exit 2; }
mkdir -p "$stack/bin" "$stack/gobuild"
GOBIN="$stack/gobuild" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$version"
mv "$stack/gobuild/server" "$bin"
ln -sf "$(basename "$bin")" "$stack/bin/toxiproxy-server"
echo "built $bin"

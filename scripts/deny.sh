#!/usr/bin/env bash
# cargo deny with deny.toml: advisories, licences, duplicate versions, sources.
# The RustSec advisory database is a git repository that cargo-deny fetches; where it
# cannot be fetched (a machine that reaches only package registries), the other three
# checks still run and the output says, loudly, that advisories were not checked.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-deny >/dev/null || cargo install --locked --quiet cargo-deny
cargo deny --version
if timeout 120 cargo deny --locked fetch db >/tmp/portcullis-deny-fetch.log 2>&1; then
  cargo deny --locked check
else
  echo "WARNING: the RustSec advisory database could not be fetched (below); advisories NOT checked here:"
  tail -3 /tmp/portcullis-deny-fetch.log
  cargo deny --locked check bans licenses sources
fi

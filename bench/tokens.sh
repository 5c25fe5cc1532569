#!/usr/bin/env bash
# Token-service benchmark: the real router over SQLite on a loopback listener, with the
# production argon2id parameters (19 MiB, t=2, p=1), and prints one line:
#   RESULT logins_per_s=… argon2id_ms_per_login=… refreshes_per_s=… …
# PROFILE=release (default) builds with the workspace's release profile (fat LTO: slow
# to build); PROFILE=debug uses the debug build, where argon2 still runs at opt-level 3
# (Cargo.toml) but everything else does not. LOGINS, REFRESHES, CONCURRENCY tune the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo run -q --release -p portcullis-operator --example tokens_bench
else
  cargo run -q -p portcullis-operator --example tokens_bench
fi

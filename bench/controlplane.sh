#!/usr/bin/env bash
# The control plane under load, one RESULT line per figure (issue #14):
#
#   RESULT backend=<sqlite|postgres> sidecars=1000 namespaces=100 revocations=100 p50_ms= p99_ms= peak_rss_mib= cpu_s_per_revision=
#   RESULT snapshot users=10000 api_keys=100000 build_ms= bytes_per_sidecar= gzip_bytes_per_sidecar=
#
# Propagation: the operator (local mode) as a process, 1,000 simulated sidecars
# long-polling it across 100 namespaces (tests/src/bin/cp_load.rs), 100 API keys revoked
# one after the other straight in the database; each latency is the time from the write
# to a sidecar holding the revision that carries it (100 × 1,000 samples). PostgreSQL runs
# when TEST_POSTGRES_URL is set (a fresh database is made beside it).
#
#   bash bench/controlplane.sh                 # release build (PROFILE=debug for a quick look)
#   SIDECARS=200 REVOCATIONS=20 bash bench/controlplane.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROFILE=${PROFILE:-release}
SIDECARS=${SIDECARS:-1000} NAMESPACES=${NAMESPACES:-100} REVOCATIONS=${REVOCATIONS:-100}
USERS=${USERS:-10000} KEYS=${KEYS:-100000}
flag=(); [[ $PROFILE == release ]] && flag=(--release)
cargo build "${flag[@]}" --quiet --manifest-path "$ROOT/Cargo.toml" \
  -p portcullis-operator --bin portcullis-operator -p portcullis-e2e --bin cp_load
# A long poll is a socket on each side: give both processes room.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOAD="$ROOT/target/$PROFILE/cp_load"
"$LOAD" propagation --backend sqlite --sidecars "$SIDECARS" --namespaces "$NAMESPACES" --revocations "$REVOCATIONS"
if [[ -n ${TEST_POSTGRES_URL:-} ]]; then
  "$LOAD" propagation --backend postgres --database-url "$TEST_POSTGRES_URL" \
    --sidecars "$SIDECARS" --namespaces "$NAMESPACES" --revocations "$REVOCATIONS"
fi
"$LOAD" snapshot --users "$USERS" --api-keys "$KEYS"

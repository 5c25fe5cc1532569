#!/usr/bin/env bash
# The control plane under load, one RESULT line per figure (issue #14):
#
#   RESULT backend=<sqlite|postgres> kind=<api_key|user> sidecars=1000 namespaces=100 revocations=100 p50_ms= p99_ms= peak_rss_mib= cpu_s_per_revision= answered_per_revision=
#   RESULT snapshot users=10000 api_keys=100000 namespaces=100 build_ms= read_ms= view_ms= bytes_per_sidecar= gzip_bytes_per_sidecar=
#   RESULT snapshot users=10000 api_keys=100000 json_bytes= gzip_bytes= sidecar_rss_mib= sidecar_peak_mib=
#   RESULT snapshot users=10000 api_keys=100000 build_ms= bytes_per_sidecar= sidecar_rss_mib= sidecar_peak_mib=
#
# Propagation: the operator (local mode) as a process, 1,000 simulated sidecars
# long-polling it across 100 namespaces (tests/src/bin/cp_load.rs), revocations written
# straight in the database one after the other; each latency is the time from the write
# to a sidecar it concerns holding the revision that carries it. `api_key`: 100 keys, one
# namespace's each (10 sidecars concerned, the other 990 should not be answered at all);
# `user`: 100 users disabled (all 1,000 concerned). PostgreSQL runs when TEST_POSTGRES_URL
# is set (a fresh database is made beside it).
#
# Snapshot: the time one replica takes per revision to read USERS users and KEYS keys and
# index them by namespace (build_ms), and the bytes a namespace's sidecars receive
# (keys spread over 100 namespaces). Sidecar memory (bench/sidecar_memory.sh): a release
# sidecar holding all USERS users and KEYS keys in its one namespace (the worst case),
# across the install of a second revision. The last line puts the issue's figures together.
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
  -p portcullis-operator --bin portcullis-operator -p portcullis-e2e --bin cp_load -p portcullis-proxy --bin portcullis-proxy
# A long poll is a socket on each side: give both processes room.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LOAD="$ROOT/target/$PROFILE/cp_load"
"$LOAD" propagation --backend sqlite --sidecars "$SIDECARS" --namespaces "$NAMESPACES" --revocations "$REVOCATIONS"
if [[ -n ${TEST_POSTGRES_URL:-} ]]; then
  "$LOAD" propagation --backend postgres --database-url "$TEST_POSTGRES_URL" \
    --sidecars "$SIDECARS" --namespaces "$NAMESPACES" --revocations "$REVOCATIONS"
fi
snapshot=$("$LOAD" snapshot --users "$USERS" --api-keys "$KEYS" --namespaces "$NAMESPACES")
echo "$snapshot"
memory=$(USERS=$USERS KEYS=$KEYS SIDECAR_BIN="$ROOT/target/$PROFILE/portcullis-proxy" bash "$ROOT/bench/sidecar_memory.sh" | grep '^RESULT')
echo "$memory"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
echo "RESULT snapshot users=$USERS api_keys=$KEYS build_ms=$(field build_ms "$snapshot") bytes_per_sidecar=$(field bytes_per_sidecar "$snapshot") sidecar_rss_mib=$(field sidecar_rss_mib "$memory") sidecar_peak_mib=$(field sidecar_peak_mib "$memory")"

#!/usr/bin/env bash
# The sidecar side by side with nginx and HAProxy under the same load
# (../shared/bench/peers.sh): builds portcullis-proxy in release mode, writes a policy
# snapshot for the keys peers.sh generates (bench/snapshot.py), and prints peers.sh's
# table unchanged. Rows: portcullis-hs256, -rs256, -apikey and -mtls (client cert
# required; needs oha, see peers.sh). The proxy runs one worker thread, as nginx
# (worker_processes 1) and HAProxy (nbthread 1) do here; PROXY_WORKERS=2 gives it both cores.
#
#   bash bench/sidecar.sh                     # full run, about 6 minutes
#   REPS=1 LOAD_BUDGET_S=60 bash bench/sidecar.sh   # quick look
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_SH=${PEERS_SH:-$ROOT/../shared/bench/peers.sh}
[[ -f $PEERS_SH ]] || { echo "error: $PEERS_SH not found (set PEERS_SH)" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p portcullis-proxy
export PORTCULLIS_ROOT=$ROOT
export PROXY_NAME=portcullis PROXY_AUTH="hs256 rs256 apikey" PROXY_MTLS_PORT=${PROXY_MTLS_PORT:-18444}
export PROXY_ADMIN_PORT=${PROXY_ADMIN_PORT:-18991}
# shellcheck disable=SC2016  # expanded by peers.sh's shell, which has the variables
export PROXY_CMD='python3 "$PORTCULLIS_ROOT/bench/snapshot.py" > "$BENCH_DIR/portcullis-snapshot.json" && exec "$PORTCULLIS_ROOT/target/release/portcullis-proxy" \
  --listen 127.0.0.1:$PROXY_PORT --admin-listen 127.0.0.1:$PROXY_ADMIN_PORT \
  --tls-listen 127.0.0.1:$PROXY_MTLS_PORT --tls-cert $MTLS_SERVER_CERT_FILE --tls-key $MTLS_SERVER_KEY_FILE \
  --client-ca $MTLS_CA_FILE --client-auth required \
  --upstream $UPSTREAM_URL --snapshot-file $BENCH_DIR/portcullis-snapshot.json --namespace bench --log warn --workers ${PROXY_WORKERS:-1}'
cd "$ROOT"
exec bash "$PEERS_SH"

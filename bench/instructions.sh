#!/usr/bin/env bash
# Instructions the sidecar executes per request, counted by callgrind: unlike requests per
# second, the count does not move with the machine's other tenants, so it compares builds.
# Needs the files of a kept bench/sidecar.sh run (keys, tokens, snapshot, nginx configs):
#
#   KEEP=1 BENCH_DIR=/tmp/pb bash bench/sidecar.sh       # once
#   BENCH_DIR=/tmp/pb bash bench/instructions.sh          # prints instructions/request
#   BENCH_DIR=/tmp/pb PROXY_BIN=/other/build/portcullis-proxy CONNS=128 bash bench/instructions.sh
#   BENCH_DIR=/tmp/pb CREDENTIAL=apikey bash bench/instructions.sh      # the API-key path
#
# The proxy runs under valgrind behind the same upstream nginx as in peers.sh; wrk sends HS256
# (or API-key) requests for 3 s (warm-up, not counted) and 6 s (counted).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${BENCH_DIR:?set BENCH_DIR to a kept bench/sidecar.sh run (KEEP=1 BENCH_DIR=…)}
BIN=${PROXY_BIN:-$ROOT/target/release/portcullis-proxy}
CONNS=${CONNS:-8}
for tool in valgrind callgrind_control callgrind_annotate wrk nginx; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
[[ -x $BIN ]] || cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p portcullis-proxy
OUT=$(mktemp -d /tmp/instructions.XXXXXX)
nginx -c "$B/upstream.conf" -p "$B" >/dev/null 2>&1 &
valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" "$BIN" \
  --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:18991 --upstream http://127.0.0.1:18080 \
  --snapshot-file "$B/portcullis-snapshot.json" --namespace bench --log warn --workers 1 \
  >"$OUT/proxy.log" 2>&1 &
PROXY=$!
cleanup() {
  kill "$PROXY" 2>/dev/null || true
  [[ -f $B/upstream.pid ]] && kill "$(cat "$B/upstream.pid")" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  curl -sf -o /dev/null http://127.0.0.1:18991/readyz && break
  sleep 0.5
done
# The credential: a cached HS256 JWT by default; CREDENTIAL=apikey sends the API key.
case ${CREDENTIAL:-hs256} in
  hs256) AUTH="Authorization: Bearer $(cat "$B/jwt/TOKEN_HS256")" ;;
  apikey) AUTH="X-API-Key: $(cat "$B/jwt/api.key")" ;;
  *) echo "error: CREDENTIAL is hs256 or apikey" >&2; exit 1 ;;
esac
wrk -t1 -c"$CONNS" -d3 -H "$AUTH" http://127.0.0.1:18090/ >/dev/null
callgrind_control --zero "$PROXY" >/dev/null 2>&1
LOAD=$(wrk -t1 -c"$CONNS" -d6 -H "$AUTH" http://127.0.0.1:18090/)
callgrind_control --dump "$PROXY" >/dev/null 2>&1
sleep 1
if grep -q "Non-2xx" <<<"$LOAD"; then
  echo "error: the proxy refused requests; is BENCH_DIR's snapshot the one for its keys?" >&2
  exit 1
fi
REQUESTS=$(awk '/requests in/{print $1}' <<<"$LOAD")
INSTRUCTIONS=$(callgrind_annotate "$OUT/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
echo "requests=$REQUESTS instructions=$INSTRUCTIONS instructions_per_request=$((INSTRUCTIONS / REQUESTS))"
echo "profile: $OUT/cg.out.1 (callgrind_annotate --inclusive=yes $OUT/cg.out.1)"

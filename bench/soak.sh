#!/usr/bin/env bash
# Soak: the sidecar at about 80 % of its measured maximum for a long time, with a new
# policy snapshot installed every second and a mix of allowed (200), denied (401, 403)
# and rate-limited (429) requests. Every 10 s it prints the sidecar's RSS, open file
# descriptors, request rate and answers by class; at the end one RESULT line, and it
# fails (exit 1) when RSS or descriptors grew after warm-up, when any answer was
# unexpected (5xx, an error of the load tool), or when snapshots stopped being installed.
#
#   bash bench/soak.sh                                  # 10 minutes, release build
#   DURATION=30 BIN=target/debug/portcullis-proxy bash bench/soak.sh   # what CI runs
#
# Needs nginx (the app: `return 200`) and wrk (the load, with a Lua script that mixes
# the requests and paces them). Ports: PORT_BASE (default 18500) .. +2.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-600}
INTERVAL=${INTERVAL:-10}
CONNS=${CONNS:-32}
LOAD_SHARE=${LOAD_SHARE:-0.8}
PORT_BASE=${PORT_BASE:-18500}
APP_PORT=$PORT_BASE PROXY_PORT=$((PORT_BASE + 1)) ADMIN_PORT=$((PORT_BASE + 2))
# RSS may grow this much after warm-up (allocator arenas settle); descriptors not at all
# beyond the connections in flight.
RSS_SLACK_PCT=${RSS_SLACK_PCT:-10}
FD_SLACK=${FD_SLACK:-8}
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p portcullis-proxy
  BIN=$ROOT/target/release/portcullis-proxy
fi
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx wrk curl)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "error: $BIN is not an executable" >&2; exit 1; }

D=$(mktemp -d /tmp/portcullis-soak.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $D/nginx.pid ]] && kill "$(cat "$D/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  [[ -n ${KEEP:-} ]] || rm -rf "$D"
}
trap cleanup EXIT

# --- the app
mkdir -p "$D/nginx"
cat >"$D/nginx.conf" <<EOF
worker_processes 1;
pid $D/nginx.pid;
error_log $D/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $D/nginx; proxy_temp_path $D/nginx; fastcgi_temp_path $D/nginx;
  uwsgi_temp_path $D/nginx; scgi_temp_path $D/nginx;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$APP_PORT; location / { return 200 "ok\n"; } }
}
EOF
nginx -c "$D/nginx.conf" -p "$D" >/dev/null 2>&1

# --- keys and the snapshot (a new revision every second)
KEY_READ=$(python3 -c 'import secrets; print("pck_" + secrets.token_urlsafe(32))')
KEY_NONE=$(python3 -c 'import secrets; print("pck_" + secrets.token_urlsafe(32))')
write_snapshot() { # revision
  KEY_READ=$KEY_READ KEY_NONE=$KEY_NONE python3 - "$1" >"$D/snapshot.tmp" <<'EOF'
import hashlib, json, os, sys, time
rev = int(sys.argv[1])
key = lambda k, owner, scopes: {"key_hash": hashlib.sha256(k.encode()).hexdigest(), "prefix": k[:8],
    "namespace": "soak", "owner_kind": "user", "owner_name": owner, "scopes": scopes,
    "expires_at": None, "revoked_at": None}
user = lambda name, roles: {"name": name, "email": f"{name}@soak.test", "disabled": False, "roles": roles, "teams": []}
print(json.dumps({
    "revision": rev, "generated_at": int(time.time()),
    "roles": [{"name": "reader", "scopes": ["read"]}],
    "users": [user("reader", ["reader"]), user("nobody", [])],
    "api_keys": [key(os.environ["KEY_READ"], "reader", ["read"]), key(os.environ["KEY_NONE"], "nobody", [])],
    "sources": [], "revoked_sessions": [],
    "policies": [{"namespace": "soak", "name": "soak", "pod_selector": {}, "cors": None, "api_versions": None,
        "rules": [
            {"name": "limited", "paths": ["/limited/**"], "requireScopes": ["read"],
             "rateLimit": {"requestsPerSecond": 50, "burst": 50}},
            {"name": "api", "paths": ["/**"], "requireScopes": ["read"]}]}],
    "jwt_issuers": [],
}))
EOF
  mv "$D/snapshot.tmp" "$D/snapshot.json"
}
write_snapshot 1

"$BIN" --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$APP_PORT" --snapshot-file "$D/snapshot.json" --namespace soak \
  --log warn --workers "${PROXY_WORKERS:-1}" >"$D/proxy.log" 2>&1 &
PROXY=$!
pids+=("$PROXY")
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
  sleep 0.2
done
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || { cat "$D/proxy.log" >&2; echo "FAIL: the sidecar did not become ready" >&2; exit 1; }

# Each expected answer once, before the load: the mix means what it says.
expect() { # status, curl args...
  local want=$1; shift
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [[ $got == "$want" ]] || { echo "FAIL: expected $want, got $got for $*" >&2; exit 1; }
}
expect 200 -H "X-API-Key: $KEY_READ" "http://127.0.0.1:$PROXY_PORT/ok"
expect 403 -H "X-API-Key: $KEY_NONE" "http://127.0.0.1:$PROXY_PORT/ok"
expect 401 "http://127.0.0.1:$PROXY_PORT/ok"

# --- the load: 70 % allowed, 10 % forbidden, 10 % unauthenticated, 10 % on the limited
# route (50/s allowed, the rest 429). `delay()` paces the requests: with probability
# PACE a connection waits 1 ms before its next request, which sets the rate finely.
cat >"$D/mix.lua" <<EOF
local reqs = {}
local paths = {}
for i = 1, 7 do paths[#paths + 1] = {"/ok", "$KEY_READ"} end
paths[#paths + 1] = {"/ok", "$KEY_NONE"}
paths[#paths + 1] = {"/ok", nil}
paths[#paths + 1] = {"/limited/x", "$KEY_READ"}
local pace = tonumber(os.getenv("PACE") or "0")
local n = 0
request = function()
  n = n + 1
  local p = paths[(n % #paths) + 1]
  local headers = {}
  if p[2] then headers["X-API-Key"] = p[2] end
  return wrk.format("GET", p[1], headers)
end
delay = function()
  if pace > 0 and math.random() < pace then return 1 end
  return 0
end
EOF
rate_of() { # wrk output -> requests/s
  awk '/^Requests\/sec:/ { printf "%d", $2 }' <<<"$1"
}
run_wrk() { # seconds, pace
  PACE=$2 wrk -t1 -c"$CONNS" -d"$1"s -s "$D/mix.lua" "http://127.0.0.1:$PROXY_PORT/"
}
max=$(rate_of "$(run_wrk 5 0)")
target=$(python3 -c "print(int($max * $LOAD_SHARE))")
# Two corrections: the latency falls with the load, so the first guess overshoots.
pace=0.3
for _ in 1 2 3; do
  got=$(rate_of "$(run_wrk 3 "$pace")")
  pace=$(python3 -c "
got, target, pace = $got, $target, $pace
# rate ~ conns / (latency + pace ms): solve for the pace that gives the target.
lat = max($CONNS / max(got, 1) * 1000 - pace, 0.01)
print(round(min(max($CONNS / target * 1000 - lat, 0.0), 1.0), 4))")
done
echo "soak: max ${max} rps with this mix; target ${target} rps (${LOAD_SHARE} of max), pace ${pace}, ${CONNS} connections, ${DURATION} s, a snapshot every second"

# --- a new revision every second (sed, not python: cheap enough on a loaded machine)
(
  rev=2
  while true; do
    sed "s/\"revision\": [0-9]*/\"revision\": $rev/" "$D/snapshot.json" >"$D/snapshot.next"
    mv "$D/snapshot.next" "$D/snapshot.json"
    rev=$((rev + 1))
    sleep 1
  done
) &
pids+=("$!")

metric_sum() { # metrics text, metric name, label regex -> sum
  awk -v name="$2" -v re="$3" '$1 ~ "^"name"[{ ]" && $1 ~ re { s += $NF } END { printf "%d", s }' <<<"$1"
}
sample() {
  local m
  m=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics") || { echo "FAIL: metrics unreachable" >&2; return 1; }
  S_RSS=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY/status")
  S_HWM=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY/status")
  S_FDS=$(find "/proc/$PROXY/fd" -mindepth 1 -maxdepth 1 | wc -l)
  S_OK=$(metric_sum "$m" portcullis_proxy_requests_total 'status="200"')
  S_401=$(metric_sum "$m" portcullis_proxy_requests_total 'status="401"')
  S_403=$(metric_sum "$m" portcullis_proxy_requests_total 'status="403"')
  S_429=$(metric_sum "$m" portcullis_proxy_requests_total 'status="429"')
  S_ALL=$(metric_sum "$m" portcullis_proxy_requests_total 'status=')
  S_REV=$(awk '$1 == "portcullis_proxy_snapshot_revision" { printf "%d", $2 }' <<<"$m")
  S_UPERR=$(metric_sum "$m" portcullis_proxy_upstream_errors_total 'kind=')
}

run_wrk "$DURATION" "$pace" >"$D/wrk.out" 2>&1 &
WRK=$!
pids+=("$WRK")
sample
# Counters are cumulative since the sidecar started (calibration included): report deltas.
start_all=$S_ALL start_rev=$S_REV start_ok=$S_OK start_401=$S_401 start_403=$S_403 start_429=$S_429
t0=$(date +%s)
prev_all=$S_ALL
warm_rss="" warm_fds="" max_rss=0 max_fds=0 elapsed=0
printf '%6s %9s %9s %5s %9s %9s %10s %10s %11s %10s %8s\n' t_s rss_mib hwm_mib fds rps ok_200 denied_401 denied_403 limited_429 unexpected revision
while kill -0 "$WRK" 2>/dev/null; do
  sleep "$INTERVAL"
  kill -0 "$WRK" 2>/dev/null || break
  now=$(date +%s)
  sample
  unexpected=$((S_ALL - S_OK - S_401 - S_403 - S_429))
  rps=$(((S_ALL - prev_all) / (now - t0 - elapsed > 0 ? now - t0 - elapsed : 1)))
  elapsed=$((now - t0))
  prev_all=$S_ALL
  printf '%6d %9s %9s %5d %9d %9d %10d %10d %11d %10d %8d\n' "$elapsed" "$S_RSS" "$S_HWM" "$S_FDS" "$rps" \
    $((S_OK - start_ok)) $((S_401 - start_401)) $((S_403 - start_403)) $((S_429 - start_429)) "$unexpected" "$S_REV"
  # Warm-up: the first sample (or the first third of a short run) fills pools and arenas.
  if [[ -z $warm_rss ]]; then
    warm_rss=$S_RSS warm_fds=$S_FDS
  fi
  max_rss=$(python3 -c "print(max($max_rss, $S_RSS))")
  ((S_FDS > max_fds)) && max_fds=$S_FDS
done
wait "$WRK" || true
elapsed=$(($(date +%s) - t0))
wrk_errors=$(awk '/Socket errors/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i } END { printf "%d", s }' "$D/wrk.out")
non2xx=$(awk '/Non-2xx/ { print $NF }' "$D/wrk.out")
sample
end_rss=$S_RSS end_fds=$S_FDS
unexpected=$((S_ALL - S_OK - S_401 - S_403 - S_429))
installed=$((S_REV - start_rev))
total=$((S_ALL - start_all))
rate=$((total / (elapsed > 0 ? elapsed : 1)))
growth=$(python3 -c "print(round(($max_rss - ${warm_rss:-$end_rss}) / ${warm_rss:-$end_rss} * 100, 1))")
echo "RESULT soak duration_s=$elapsed rate_rps=$rate target_rps=$target max_rps=$max requests=$total rss_warm_mib=${warm_rss:-?} rss_max_mib=$max_rss rss_end_mib=$end_rss rss_growth_pct=$growth fds_warm=${warm_fds:-?} fds_max=$max_fds fds_end=$end_fds unexpected=$unexpected upstream_errors=$S_UPERR wrk_socket_errors=$wrk_errors non_2xx=${non2xx:-0} snapshots_installed=$installed"

fail=0
if [[ -z $warm_rss ]]; then echo "FAIL: the run was shorter than one sample interval" >&2; exit 1; fi
python3 -c "import sys; sys.exit(0 if $growth <= $RSS_SLACK_PCT else 1)" || { echo "FAIL: RSS grew ${growth} % after warm-up (allowed ${RSS_SLACK_PCT} %)" >&2; fail=1; }
((max_fds <= warm_fds + FD_SLACK)) || { echo "FAIL: descriptors grew from ${warm_fds} to ${max_fds}" >&2; fail=1; }
((end_fds <= warm_fds + FD_SLACK)) || { echo "FAIL: ${end_fds} descriptors open at the end (${warm_fds} after warm-up)" >&2; fail=1; }
((unexpected == 0)) || { echo "FAIL: ${unexpected} unexpected answers (not 200/401/403/429)" >&2; fail=1; }
((S_UPERR == 0)) || { echo "FAIL: ${S_UPERR} upstream errors" >&2; fail=1; }
((wrk_errors == 0)) || { echo "FAIL: ${wrk_errors} socket errors at the load tool" >&2; fail=1; }
# The writer sleeps 1 s between revisions and the sidecar checks the file every second.
((installed >= elapsed / 3)) || { echo "FAIL: only ${installed} snapshots installed in ${elapsed} s" >&2; fail=1; }
((S_429 > 0 && S_403 > 0 && S_401 > 0)) || { echo "FAIL: the mix did not produce every class of answer" >&2; fail=1; }
exit "$fail"

#!/usr/bin/env bash
# Time from logout to refusal at a sidecar: runs ./demo.sh (local mode on SQLite, a sidecar
# long-polling it), then N times: log in as bob through the sidecar, call with the token
# (200), log out, and call again every 10 ms until the sidecar answers 401. Prints one
# `RESULT logout …` line with p50/p99/max in milliseconds (from the logout's answer to the
# first 401).
#
#   bash bench/logout.sh            # N=100
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-100}
export STATE=${STATE:-$(mktemp -d)} PROXY=${PROXY:-127.0.0.1:18480} ADMIN=${ADMIN:-127.0.0.1:18491}
export APP=${APP:-127.0.0.1:18403} API=${API:-127.0.0.1:18470}
"$ROOT/demo.sh" >"$STATE/demo.out" 2>&1 &
DEMO=$!
trap 'kill $DEMO 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "== running" "$STATE/demo.out" 2>/dev/null && break; sleep 0.5; done
grep -q "== running" "$STATE/demo.out" || { cat "$STATE/demo.out"; echo "error: the demo did not start" >&2; exit 1; }
P=http://$PROXY
ms() { date +%s%3N; }
times=()
for i in $(seq 1 "$N"); do
  login=$(curl -s -X POST "$P/api/v1/auth/login" -H 'Content-Type: application/json' \
    -d '{"email":"bob@example.com","password":"example-Bob-pw-41d2e8"}')
  token=$(sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$login")
  [[ -n $token ]] || { echo "error: login $i failed: $login" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$P/api/v1/items")
  [[ $code == 200 ]] || { echo "error: call $i answered $code" >&2; exit 1; }
  curl -s -o /dev/null -X POST -H "Authorization: Bearer $token" "$P/api/v1/auth/logout"
  t0=$(ms)
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$P/api/v1/items")
    [[ $code == 401 ]] && break
    (($(ms) - t0 > 10000)) && { echo "error: still $code 10 s after logout $i" >&2; exit 1; }
    sleep 0.01
  done
  times+=($(($(ms) - t0)))
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$N" '
  { v[NR] = $1 }
  END {
    p50 = v[int((NR + 1) * 0.50)]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1]
    printf "RESULT logout samples=%d p50_ms=%d p99_ms=%d max_ms=%d\n", NR, p50, p99, v[NR]
  }'

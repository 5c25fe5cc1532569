#!/usr/bin/env bash
# Portcullis on one machine, no cluster: the control plane (local mode, SQLite) applies
# examples/, the sidecar enforces the resulting policy in front of a sample app, and a
# few curl lines show auth at work. Ctrl-C stops everything.
#
#   ./demo.sh            # run, show, keep running for your own curls
#   ./demo.sh --check    # run, show, verify every answer, stop (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
CHECK=0; [[ ${1:-} == --check ]] && CHECK=1
STATE=${STATE:-.portcullis}
PROXY=${PROXY:-127.0.0.1:8080} ADMIN=${ADMIN:-127.0.0.1:9901} APP=${APP:-127.0.0.1:3000} API=${API:-127.0.0.1:7070}
mkdir -p "$STATE"

echo "== building (first time: a few minutes)"
cargo build --quiet -p portcullis-operator -p portcullis-proxy --bins --example sample_app

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== control plane: applying examples/ to $STATE/portcullis.db, API on http://$API (log: $STATE/operator.log)"
rm -f "$STATE/snapshot.json"
target/debug/portcullis-operator local --manifests examples --state-dir "$STATE" --api-addr "$API" >"$STATE/operator.log" 2>&1 &
pids+=($!)
# The first pass is done when the snapshot file and the namespace's API token exist.
for _ in $(seq 1 300); do [[ -s $STATE/snapshot.json && -s $STATE/tokens/shop ]] && break; sleep 0.1; done
[[ -s $STATE/tokens/shop ]] || { cat "$STATE/operator.log"; echo "error: the control plane did not start" >&2; exit 1; }

echo "== sample app on $APP, sidecar on $PROXY (admin $ADMIN), long-polling the control plane with $STATE/tokens/shop"
target/debug/examples/sample_app "$APP" >"$STATE/app.log" 2>&1 &
pids+=($!)
target/debug/portcullis-proxy --listen "$PROXY" --admin-listen "$ADMIN" --upstream "http://$APP" \
  --control-plane "http://$API" --control-plane-token-file "$STATE/tokens/shop" \
  --namespace shop --pod-label app=sample-api >"$STATE/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { cat "$STATE/proxy.log"; echo "error: sidecar not ready" >&2; exit 1; }
KEY=$(awk '/^# bob-cli-apikey$/{f=1} f && /api-key:/{print $2; exit}' "$STATE/secrets/shop.yaml" | base64 -d)
# Ready means it holds a snapshot; the control plane reads new revisions every 100 ms, so
# the first one may come from just before the first pass ended. The examples' public route
# and bob's key answering say their policy and keys are in force.
for _ in $(seq 1 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/healthz") == 200 &&
    $(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $KEY" "http://$PROXY/api/v1/items") == 200 ]] && break
  sleep 0.1
done

failed=0
show() { # expected-status description curl-args...
  local want=$1 what=$2; shift 2
  printf '\n$ curl %s\n' "$(printf '%q ' "$@" | sed "s/$KEY/\$KEY/g")"
  local out; out=$(curl -s -i "$@")
  local got; got=$(head -1 <<<"$out" | awk '{print $2}')
  sed -n '/^\r\{0,1\}$/,$p' <<<"$out" | tail -n +2 | head -c 400; echo
  grep -i '^\(deprecation\|sunset\|access-control-allow-origin\|retry-after\):' <<<"$out" || true
  if [[ $got == "$want" ]]; then echo "   -> $got ($what)"; else echo "   -> $got, expected $want ($what)"; failed=1; fi
}
echo "== bob's API key (read-only) is \$KEY, from $STATE/secrets/shop.yaml"
show 200 "public route" "http://$PROXY/healthz"
show 401 "no credential" "http://$PROXY/api/v1/items"
show 200 "bob reads; the app sees who he is" -H "X-API-Key: $KEY" "http://$PROXY/api/v1/items?page=2"
show 403 "bob may not write" -X POST -H "X-API-Key: $KEY" "http://$PROXY/api/v1/items"
show 403 "spoofed identity headers are stripped" -H "X-API-Key: $KEY" -H "X-Auth-Roles: admin" "http://$PROXY/api/v1/admin/users"
show 401 "a wrong key" -H "X-API-Key: pck_guessed" "http://$PROXY/api/v1/items"
show 400 "path tricks are refused, not guessed" --path-as-is -H "X-API-Key: $KEY" "http://$PROXY/api/v1/../admin/users"
show 200 "the old API says it is deprecated" -H "X-API-Key: $KEY" "http://$PROXY/api/v0/items"
show 204 "CORS preflight answered by the sidecar" -X OPTIONS -H "Origin: https://console.example.com" \
  -H "Access-Control-Request-Method: GET" "http://$PROXY/api/v1/items"
printf '\n$ curl -s http://%s/metrics | grep requests_total\n' "$ADMIN"
curl -s "http://$ADMIN/metrics" | grep '^portcullis_proxy_requests_total' || true

# The Quick start: lines to paste in another shell, in order. Every line that calls the
# API is a curl line ending in `# expect <status>`; lines that capture a value come before
# the lines that use it (capturing lines print their status on stderr).
QS=$STATE/quickstart.sh
field() { # the sed that takes a JSON string field out of an answer
  printf "sed -n 's/.*\"%s\":\"\\\\([^\"]*\\\\)\".*/\\\\1/p'" "$1"
}
LOGIN_BOB="curl -s -X POST \"\$P/api/v1/auth/login\" -H 'Content-Type: application/json' -d '{\"email\":\"bob@example.com\",\"password\":\"example-Bob-pw-41d2e8\"}' -w '%{stderr}%{http_code}\\n'"
STATUS="curl -s -o /dev/null -w '%{http_code}\\n'"
cat >"$QS" <<QUICKSTART
P=http://$PROXY
$STATUS "\$P/api/v1/items"   # expect 401
LOGIN=\$($LOGIN_BOB)   # expect 200
TOKEN=\$(printf '%s' "\$LOGIN" | $(field access_token)); REFRESH=\$(printf '%s' "\$LOGIN" | $(field refresh_token))
$STATUS -H "Authorization: Bearer \$TOKEN" "\$P/api/v1/items"   # expect 200
$STATUS -X POST -H "Authorization: Bearer \$TOKEN" "\$P/api/v1/items"   # expect 403
NEW=\$(curl -s -X POST "\$P/api/v1/auth/refresh" -H 'Content-Type: application/json' -d "{\"refresh_token\":\"\$REFRESH\"}" -w '%{stderr}%{http_code}\n')   # expect 200
TOKEN=\$(printf '%s' "\$NEW" | $(field access_token))
$STATUS -H "Authorization: Bearer \$TOKEN" "\$P/api/v1/items"   # expect 200
KEY=\$(awk '/^# bob-cli-apikey\$/{f=1} f && /api-key:/{print \$2; exit}' $STATE/secrets/shop.yaml | base64 -d)
$STATUS -H "X-API-Key: \$KEY" "\$P/api/v1/items"   # expect 200
$STATUS -H "X-API-Key: pck_not-a-key" "\$P/api/v1/items"   # expect 401
$STATUS -X POST -H "Authorization: Bearer \$TOKEN" "\$P/api/v1/auth/logout"   # expect 200
$STATUS -H "Authorization: Bearer \$TOKEN" "\$P/api/v1/items"   # expect 401
QUICKSTART
echo
echo "== Quick start: paste these lines in another shell, in order (they are in $QS too);"
echo "   the last one is refused because the logout before it reached the sidecar (within a second)"
echo
cat "$QS"

if ((CHECK)); then
  # Every line as a person pasting it would run it, in one shell; a line's status is the
  # last three-digit number it printed. A GET that follows a revocation may need up to a
  # second to be refused: such a line is retried for a second.
  out=$(mktemp)
  while IFS= read -r line; do
    want=$(sed -n 's/.*# expect \([0-9]\{3\}\)$/\1/p' <<<"$line")
    eval "$line" >"$out" 2>&1 || true
    [[ -z $want ]] && continue
    got=$(grep -oE '[0-9]{3}' "$out" | tail -1 || true)
    if [[ $got != "$want" && $line != *"-X POST"* ]]; then
      for _ in $(seq 1 10); do
        sleep 0.1
        eval "$line" >"$out" 2>&1 || true
        got=$(grep -oE '[0-9]{3}' "$out" | tail -1 || true)
        [[ $got == "$want" ]] && break
      done
    fi
    if [[ $got == "$want" ]]; then
      echo "ok   $want  ${line:0:100}"
    else
      echo "FAIL got ${got:-nothing}, expected $want: $line"
      failed=1
    fi
  done <"$QS"
  rm -f "$out"
  ((failed == 0)) && echo "== demo: every answer as expected" || { echo "== demo: unexpected answers" >&2; exit 1; }
  exit 0
fi
echo
echo "== running: paste the lines above, or try your own curls against http://$PROXY (edit examples/ and the policy follows); Ctrl-C stops"
wait

#!/usr/bin/env bash
# A sidecar's memory with a large snapshot: generates one (USERS users, KEYS API keys),
# serves it from a stand-in control plane on loopback (gzip when asked, then a second
# revision a few seconds later, so the peak covers installing a new revision over an old
# one), starts a release sidecar long-polling it, and reads the sidecar's VmRSS and VmHWM
# once the second revision is in force and a request with a key from the snapshot passed.
#
#   bash bench/sidecar_memory.sh                   # 10,000 users, 100,000 keys
#   USERS=100 KEYS=100 bash bench/sidecar_memory.sh   # a small policy, for comparison
#   SIDECAR_BIN=/path/to/portcullis-proxy bash bench/sidecar_memory.sh   # another build
#
# Prints: RESULT snapshot users=<n> api_keys=<n> json_bytes=<b> gzip_bytes=<b> sidecar_rss_mib=<r> sidecar_peak_mib=<p>
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
USERS=${USERS:-10000}
KEYS=${KEYS:-100000}
CP_PORT=${CP_PORT:-18071}
APP_PORT=${APP_PORT:-18072}
PROXY_PORT=${PROXY_PORT:-18073}
ADMIN_PORT=${ADMIN_PORT:-18074}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${SIDECAR_BIN:-} ]]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p portcullis-proxy
  SIDECAR_BIN=$ROOT/target/release/portcullis-proxy
fi

# The snapshot: USERS users over 20 roles and 50 teams, KEYS keys (one in ten a source's),
# one policy; key number i is "pck_bench_<i>".
python3 - "$WORK" "$USERS" "$KEYS" <<'EOF'
import hashlib, json, sys, time
work, users, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = int(time.time())
roles = [{"name": f"role-{r}", "scopes": ["read", f"res{r}:read", f"res{r}:write"]} for r in range(20)]
def snapshot(revision):
    return {
        "revision": revision, "epoch": "bench-epoch", "generated_at": now, "roles": roles,
        "users": [{"name": f"user-{u}", "email": f"user-{u}@bench.test", "disabled": u % 97 == 0,
                   "roles": [f"role-{u % 20}", f"role-{(u * 7) % 20}"],
                   "teams": [{"team": f"team-{u % 50}", "role": "member"}]} for u in range(users)],
        # As the control plane sends it: the count ahead of the keys.
        "api_key_count": keys,
        "api_keys": [{"key_hash": hashlib.sha256(f"pck_bench_{k}".encode()).hexdigest(),
                      "prefix": f"pck_bench_{k}"[:12], "namespace": "bench",
                      "owner_kind": "source" if k % 10 == 9 else "user",
                      "owner_name": f"source-{k % 10}" if k % 10 == 9 else f"user-{k % max(users, 1)}",
                      "scopes": ["read"], "expires_at": now + 86400 if k % 3 == 0 else None,
                      "revoked_at": now - 10 if k % 1000 == 999 and revision > 1 else None}
                     for k in range(keys)],
        "sources": [{"namespace": "bench", "name": f"source-{s}", "team": None, "enabled": True, "rate_limit": None}
                    for s in range(10)],
        "revoked_sessions": [f"sid-{i}" for i in range(100)],
        "policies": [{"namespace": "bench", "name": "bench", "pod_selector": {},
                      "rules": [{"name": "all", "paths": ["/**"], "requireScopes": ["read"]}],
                      "cors": None, "api_versions": None}],
        "jwt_issuers": [],
    }
for revision in (1, 2):
    with open(f"{work}/snapshot-{revision}.json", "w") as f:
        json.dump(snapshot(revision), f)
EOF
gzip -k -6 "$WORK/snapshot-1.json" "$WORK/snapshot-2.json"

# The stand-in control plane: revision 1 at first, revision 2 from SECOND_AT seconds on;
# a poll at the current revision is held, then answered 304.
python3 - "$WORK" "$CP_PORT" <<'EOF' &
import http.server, sys, time
work, port = sys.argv[1], int(sys.argv[2])
start = time.time()
SECOND_AT = 4.0
def current():
    return 2 if time.time() - start >= SECOND_AT else 1
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        held = -1
        for part in self.path.split("?", 1)[-1].split("&"):
            if part.startswith("revision="):
                held = int(part[len("revision="):])
        deadline = time.time() + 20
        while held >= current() and time.time() < deadline:
            time.sleep(0.05)
        if held >= current():
            self.send_response(304); self.send_header("content-length", "0"); self.end_headers(); return
        revision = current()
        gz = "gzip" in (self.headers.get("accept-encoding") or "")
        with open(f"{work}/snapshot-{revision}.json" + (".gz" if gz else ""), "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if gz:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
EOF
PIDS+=($!)

# The app: answers 200 to anything.
python3 - "$APP_PORT" <<'EOF' &
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
PIDS+=($!)
sleep 0.5

"$SIDECAR_BIN" --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$APP_PORT" --control-plane "http://127.0.0.1:$CP_PORT" \
  --namespace bench --log warn --workers 1 &
SIDECAR=$!
PIDS+=($SIDECAR)

for _ in $(seq 1 600); do
  if curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null | grep -q '^portcullis_proxy_snapshot_revision 2$'; then
    break
  fi
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^portcullis_proxy_snapshot_revision 2$' \
  || { echo "error: revision 2 never installed" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: pck_bench_3" "http://127.0.0.1:$PROXY_PORT/x")
[[ $status == 200 ]] || { echo "error: a key of the snapshot got $status" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: pck_bench_999" "http://127.0.0.1:$PROXY_PORT/x")
[[ $status == 401 ]] || { echo "error: a key revoked in revision 2 got $status" >&2; exit 1; }
sleep 1
rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SIDECAR/status")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$SIDECAR/status")
json_bytes=$(stat -c %s "$WORK/snapshot-2.json")
gzip_bytes=$(stat -c %s "$WORK/snapshot-2.json.gz")
awk -v u="$USERS" -v k="$KEYS" -v j="$json_bytes" -v g="$gzip_bytes" -v r="$rss" -v h="$hwm" 'BEGIN {
  printf "RESULT snapshot users=%d api_keys=%d json_bytes=%d gzip_bytes=%d sidecar_rss_mib=%.1f sidecar_peak_mib=%.1f\n", u, k, j, g, r / 1024, h / 1024
}'

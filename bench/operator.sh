#!/usr/bin/env bash
# Operator benchmark: reconciles 10,000 Users, 1,000 Teams and 10,000 APIKeys through the
# real reconcilers (local mode: in-memory Kubernetes API, real database) into PostgreSQL
# and into SQLite, and prints one line per backend:
#   RESULT backend=<postgres|sqlite> objects=<n> seconds=<time to converge> peak_rss_mib=<peak RSS>
# Needs PostgreSQL at $BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres;
# a fresh database is created and dropped next to it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

USERS=${USERS:-10000}
TEAMS=${TEAMS:-1000}
KEYS=${KEYS:-10000}
PG_ADMIN=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

cargo build --release -q -p portcullis-operator
bin=target/release/portcullis-operator
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work/manifests" "$USERS" "$TEAMS" "$KEYS" <<'PY'
import os, sys
out, users, teams, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(out)
roles = ["viewer", "maintainer", "admin"]
with open(f"{out}/users.yaml", "w") as f:
    for i in range(users):
        f.write(f"---\napiVersion: portcullis.io/v1alpha1\nkind: User\nmetadata:\n  name: user-{i}\n"
                f"spec:\n  email: user-{i}@bench.example.com\n  roles: [{roles[i % 3]}]\n  apiKeyNamespaces: [bench]\n")
with open(f"{out}/teams.yaml", "w") as f:
    for t in range(teams):
        members = "".join(f"\n    - user: user-{(t * 10 + m) % users}\n      role: {['owner','admin','member','viewer'][m % 4]}" for m in range(10))
        f.write(f"---\napiVersion: portcullis.io/v1alpha1\nkind: Team\nmetadata:\n  name: team-{t}\nspec:\n  members:{members}\n")
with open(f"{out}/apikeys.yaml", "w") as f:
    for k in range(keys):
        f.write(f"---\napiVersion: portcullis.io/v1alpha1\nkind: APIKey\nmetadata:\n  name: key-{k}\n  namespace: bench\n"
                f"spec:\n  owner:\n    user: user-{k % users}\n  scopes: [read]\n")
PY
objects=$((USERS + TEAMS + KEYS))

run() { # backend, DATABASE_URL
  local backend=$1 url=$2 state="$work/state-$1"
  mkdir -p "$state"
  /usr/bin/time -f '%e %M' -o "$work/time-$backend" \
    env DATABASE_URL="$url" RUST_LOG=warn "$bin" local --once --manifests "$work/manifests" --state-dir "$state" \
    > "$work/out-$backend" 2> "$work/err-$backend" || { cat "$work/err-$backend" >&2; exit 1; }
  read -r seconds rss_kib < "$work/time-$backend"
  # Every benchmark object must have converged to Ready (plus the 3 built-in roles are
  # not listed: they have no Role object).
  ready=$(awk '($1 == "User" || $1 == "Team" || $1 == "APIKey") && $3 == "True"' "$work/out-$backend" | wc -l)
  if [ "$ready" -ne "$objects" ]; then
    echo "FAIL: $backend: only $ready of $objects objects Ready" >&2
    grep -vE ' True ' "$work/out-$backend" | head -5 >&2
    exit 1
  fi
  echo "RESULT backend=$backend objects=$objects seconds=$seconds peak_rss_mib=$((rss_kib / 1024))"
}

db="bench_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE $db" >/dev/null
trap 'psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; rm -rf "$work"' EXIT
pg_url=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$db').geturl())" "$PG_ADMIN")
run postgres "$pg_url"
run sqlite "sqlite://$work/state-sqlite/portcullis.db"

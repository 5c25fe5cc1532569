#!/usr/bin/env bash
# A three-node MariaDB Galera cluster on loopback, for tests: beside the machine's own
# MariaDB (3306), with its own data directories, ports and processes.
#
#   scripts/galera.sh start        bootstrap node 1, join 2 and 3 (state transfer by
#                                  mariabackup), wait until all three are Synced;
#                                  nothing to do when the cluster is already up
#   scripts/galera.sh stop         stop every node cleanly (3, 2, then 1) and forget the state
#   scripts/galera.sh status       each node's state; exit 0 only when all are Synced
#   scripts/galera.sh urls         the nodes' URLs, comma separated (TEST_GALERA_URLS)
#   scripts/galera.sh kill N       SIGKILL node N (no shutdown: a crash)
#   scripts/galera.sh start-node N start node N again (it rejoins by IST or SST) and wait
#                                  until it is Synced
#   scripts/galera.sh restart N    kill N, then start-node N
#   scripts/galera.sh isolate N    cut node N off the group (gmcast.isolate): it loses
#                                  quorum and answers "WSREP has not yet prepared node"
#   scripts/galera.sh heal N       undo isolate and wait until node N is Synced again
#   scripts/galera.sh logs         the tail of every node's log
#
# Environment: GALERA_DIR (state, default /tmp/portcullis-galera), GALERA_PORT (node 1's
# SQL port, default 4306; node N listens on GALERA_PORT+N-1 for SQL, +100 for group
# communication, +110 for IST, +120 for SST), GALERA_WAIT (seconds to wait for a node,
# default 180).
#
# A `start` after `stop` (or after every node died) builds a fresh cluster: this is a
# test fixture, its data is disposable. Fails loudly, with the nodes' logs, when a node
# does not come up. Runs as root (CI); the servers run as the `mysql` user. Needs the
# Debian packages galera-4, mariadb-server, mariadb-backup and socat.
set -euo pipefail

DIR=${GALERA_DIR:-/tmp/portcullis-galera}
BASE=${GALERA_PORT:-4306}
WAIT=${GALERA_WAIT:-180}
NODES=(1 2 3)
PROVIDER=/usr/lib/galera/libgalera_smm.so
RUN_AS=mysql

die() {
  echo "galera.sh: $*" >&2
  show_logs >&2
  exit 1
}

sql_port() { echo $((BASE + $1 - 1)); }
gcomm_port() { echo $((BASE + 100 + $1 - 1)); }
ist_port() { echo $((BASE + 110 + $1 - 1)); }
sst_port() { echo $((BASE + 120 + $1 - 1)); }
node_dir() { echo "$DIR/node$1"; }
pid_of() {
  local f; f="$(node_dir "$1")/mariadbd.pid"
  [ -s "$f" ] && cat "$f"
}
alive() {
  local pid; pid=$(pid_of "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# SQL as root over the node's socket (unix_socket authentication: no password exists).
q() {
  local n=$1; shift
  mariadb --no-defaults -uroot --socket="$(node_dir "$n")/mysqld.sock" -N -B -e "$*"
}

status_var() { # node, variable
  q "$1" "SHOW GLOBAL STATUS LIKE '$2'" 2>/dev/null | awk '{print $2}'
}

show_logs() {
  for n in "${NODES[@]}"; do
    local d; d=$(node_dir "$n")
    [ -d "$d" ] || continue
    echo "----- node $n: $d/error.log (last 40 lines)"
    tail -n 40 "$d/error.log" 2>/dev/null || true
    for f in "$d"/data/mariabackup.*.log; do
      [ -f "$f" ] || continue
      echo "----- node $n: $f (last 15 lines)"
      tail -n 15 "$f"
    done
  done
}

write_config() { # node
  local n=$1 d; d=$(node_dir "$n")
  local peers=""
  for m in "${NODES[@]}"; do peers+="${peers:+,}127.0.0.1:$(gcomm_port "$m")"; done
  mkdir -p "$d/data" "$d/tmp"
  cat >"$d/my.cnf" <<EOF
[mysqld]
user = $RUN_AS
datadir = $d/data
tmpdir = $d/tmp
socket = $d/mysqld.sock
pid-file = $d/mariadbd.pid
log-error = $d/error.log
bind-address = 127.0.0.1
port = $(sql_port "$n")
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
max_connections = 300
performance_schema = OFF
innodb_buffer_pool_size = 32M
innodb_log_file_size = 16M
innodb_flush_log_at_trx_commit = 2

# What Galera needs (README, "MariaDB Galera").
binlog_format = ROW
default_storage_engine = InnoDB
innodb_autoinc_lock_mode = 2
wsrep_on = ON
wsrep_provider = $PROVIDER
wsrep_cluster_name = portcullis-test
wsrep_cluster_address = gcomm://$peers
wsrep_node_name = node$n
wsrep_node_address = 127.0.0.1:$(gcomm_port "$n")
wsrep_sst_receive_address = 127.0.0.1:$(sst_port "$n")
wsrep_sst_method = mariabackup
# Failure detection tuned for loopback: a killed node is evicted within seconds.
wsrep_provider_options = "base_port=$(gcomm_port "$n");ist.recv_addr=127.0.0.1:$(ist_port "$n");gcache.size=64M;evs.keepalive_period=PT1S;evs.suspect_timeout=PT3S;evs.inactive_check_period=PT1S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S"
!include $DIR/sst.cnf

[sst]
# mariabackup's own logs stay beside the data, for show_logs.
sst-log-archive = 0
EOF
  chown -R "$RUN_AS:" "$d"
}

launch() { # node, extra mariadbd arguments...
  local n=$1; shift
  local d; d=$(node_dir "$n")
  rm -f "$d/mariadbd.pid"
  setsid /usr/sbin/mariadbd --defaults-file="$d/my.cnf" "$@" >>"$d/error.log" 2>&1 </dev/null &
  disown || true
}

wait_synced() { # node, cluster size expected
  local n=$1 size=$2 state="" seen=""
  for _ in $(seq 1 "$WAIT"); do
    if ! alive "$n" && [ -n "$seen" ]; then
      die "node $n exited while starting (last state: ${state:-none})"
    fi
    if alive "$n"; then seen=1; fi
    state=$(status_var "$n" wsrep_local_state_comment || true)
    if [ "$state" = "Synced" ] && [ "$(status_var "$n" wsrep_cluster_size)" = "$size" ] \
      && [ "$(status_var "$n" wsrep_ready)" = "ON" ]; then
      return 0
    fi
    sleep 1
  done
  die "node $n not Synced in a cluster of $size after ${WAIT}s (state: ${state:-no answer})"
}

preflight() {
  [ "$(id -u)" = 0 ] || { echo "galera.sh: run as root (the servers run as $RUN_AS)" >&2; exit 1; }
  for need in /usr/sbin/mariadbd "$PROVIDER" /usr/bin/mariabackup /usr/bin/socat /usr/bin/mariadb-install-db; do
    [ -e "$need" ] || { echo "galera.sh: $need missing: apt-get install galera-4 mariadb-server mariadb-backup socat" >&2; exit 1; }
  done
  for n in "${NODES[@]}"; do
    for port in $(sql_port "$n") $(gcomm_port "$n") $(ist_port "$n") $(sst_port "$n"); do
      if ss -Htln "sport = :$port" | grep -q .; then
        echo "galera.sh: port $port is taken by another process (set GALERA_PORT)" >&2
        exit 1
      fi
    done
  done
}

all_synced() {
  for n in "${NODES[@]}"; do
    alive "$n" || return 1
    [ "$(status_var "$n" wsrep_local_state_comment)" = "Synced" ] || return 1
    [ "$(status_var "$n" wsrep_cluster_size)" = "${#NODES[@]}" ] || return 1
  done
}

cmd_start() {
  if all_synced 2>/dev/null; then
    echo "galera: already running and Synced ($(cmd_urls))"
    return 0
  fi
  # Anything half-up from an earlier run goes: a fresh cluster is built.
  for n in "${NODES[@]}"; do alive "$n" && kill -9 "$(pid_of "$n")" 2>/dev/null || true; done
  rm -rf "$DIR"
  preflight
  mkdir -p "$DIR"
  chmod 755 "$DIR"
  # The state-transfer user's password: random, readable by the servers only.
  local sst_pass
  sst_pass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  printf '[mysqld]\nwsrep_sst_auth = sst:%s\n' "$sst_pass" >"$DIR/sst.cnf"
  chown "$RUN_AS:" "$DIR/sst.cnf"
  chmod 600 "$DIR/sst.cnf"
  for n in "${NODES[@]}"; do write_config "$n"; done

  echo "galera: bootstrapping node 1 (SQL port $(sql_port 1))"
  mariadb-install-db --defaults-file="$(node_dir 1)/my.cnf" --skip-test-db >"$DIR/install.log" 2>&1 \
    || { cat "$DIR/install.log" >&2; die "mariadb-install-db failed"; }
  launch 1 --wsrep-new-cluster
  wait_synced 1 1
  q 1 "CREATE USER 'sst'@'localhost' IDENTIFIED BY '$sst_pass';
       GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO 'sst'@'localhost';
       CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
       GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
  for n in 2 3; do
    echo "galera: node $n joins (SQL port $(sql_port "$n"), state transfer by mariabackup)"
    launch "$n"
    wait_synced "$n" "$n"
  done
  echo "galera: 3 nodes Synced ($(cmd_urls))"
}

cmd_stop() {
  for n in 3 2 1; do
    alive "$n" || continue
    local pid; pid=$(pid_of "$n")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "galera: node $n did not stop in 60 s; killing it" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$DIR"
  echo "galera: stopped"
}

cmd_status() {
  local ok=0
  for n in "${NODES[@]}"; do
    if alive "$n"; then
      echo "node $n: port $(sql_port "$n") pid $(pid_of "$n") state $(status_var "$n" wsrep_local_state_comment || echo '?') cluster_size $(status_var "$n" wsrep_cluster_size || echo '?') ready $(status_var "$n" wsrep_ready || echo '?')"
      [ "$(status_var "$n" wsrep_local_state_comment)" = "Synced" ] || ok=1
    else
      echo "node $n: down"
      ok=1
    fi
  done
  return $ok
}

cmd_urls() {
  local out=""
  for n in "${NODES[@]}"; do out+="${out:+,}mysql://root@127.0.0.1:$(sql_port "$n")/${1:-test}"; done
  echo "$out"
}

node_arg() {
  case "${1:-}" in 1 | 2 | 3) ;; *) echo "galera.sh: node number 1, 2 or 3 expected" >&2; exit 2 ;; esac
}

cmd_kill() {
  node_arg "${1:-}"
  if alive "$1"; then
    kill -9 "$(pid_of "$1")"
    while alive "$1"; do sleep 0.1; done
  fi
  echo "galera: node $1 killed"
}

cmd_start_node() {
  node_arg "${1:-}"
  [ -f "$(node_dir "$1")/my.cnf" ] || die "no cluster in $DIR: run start first"
  if ! alive "$1"; then
    launch "$1"
  fi
  wait_synced "$1" "${#NODES[@]}"
  echo "galera: node $1 Synced"
}

cmd_isolate() {
  node_arg "${1:-}"
  q "$1" "SET GLOBAL wsrep_provider_options='gmcast.isolate=1'"
  for _ in $(seq 1 "$WAIT"); do
    [ "$(status_var "$1" wsrep_cluster_status)" = "non-Primary" ] && { echo "galera: node $1 isolated (non-Primary)"; return 0; }
    sleep 0.5
  done
  die "node $1 still in the primary component after isolation"
}

cmd_heal() {
  node_arg "${1:-}"
  q "$1" "SET GLOBAL wsrep_provider_options='gmcast.isolate=0'"
  wait_synced "$1" "${#NODES[@]}"
  echo "galera: node $1 Synced again"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  urls) cmd_urls "${2:-test}" ;;
  kill) cmd_kill "${2:-}" ;;
  start-node) cmd_start_node "${2:-}" ;;
  restart) cmd_kill "${2:-}"; cmd_start_node "${2:-}" ;;
  isolate) cmd_isolate "${2:-}" ;;
  heal) cmd_heal "${2:-}" ;;
  logs) show_logs ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac

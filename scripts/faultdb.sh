#!/usr/bin/env bash
# Private PostgreSQL and MariaDB servers for the database fault tests: the tests stop,
# start and cut them, which must never touch the machine's shared servers (5432, 3306)
# that other test runs use at the same time.
#
#   scripts/faultdb.sh start             create and start both (nothing to do if up)
#   scripts/faultdb.sh stop              stop both and delete their data
#   scripts/faultdb.sh status            exit 0 when both accept connections
#   scripts/faultdb.sh down postgres|mariadb   stop one server (fast shutdown: open
#                                        connections are cut), keeping its data
#   scripts/faultdb.sh up postgres|mariadb     start it again and wait until it accepts
#   scripts/faultdb.sh urls [db]         the URLs: TEST_FAULT_POSTGRES_URL TEST_FAULT_MYSQL_URL
#
# Environment: FAULTDB_DIR (state, default /tmp/portcullis-faultdb), FAULTDB_PG_PORT
# (5442), FAULTDB_MY_PORT (3316). Runs as root; the servers run as `postgres` and
# `mysql`. Users: postgres (trust) and root (empty password), on 127.0.0.1 only.
set -euo pipefail

DIR=${FAULTDB_DIR:-/tmp/portcullis-faultdb}
PG_PORT=${FAULTDB_PG_PORT:-5442}
MY_PORT=${FAULTDB_MY_PORT:-3316}
PG_BIN=/usr/lib/postgresql/$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)/bin

die() {
  echo "faultdb.sh: $*" >&2
  for log in "$DIR/pg.log" "$DIR/my/error.log"; do
    [ -f "$log" ] && { echo "----- $log (last 30 lines)" >&2; tail -n 30 "$log" >&2; }
  done
  exit 1
}

pg_up() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }
my_up() { mariadb-admin --no-defaults -h 127.0.0.1 -P "$MY_PORT" -u root ping >/dev/null 2>&1; }
my_pid() { [ -s "$DIR/my/mariadbd.pid" ] && cat "$DIR/my/mariadbd.pid"; }

wait_until() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 120); do "$@" && return 0; sleep 0.5; done
  die "$what did not come up in 60 s"
}

pg_start() {
  if [ ! -f "$DIR/pg/PG_VERSION" ]; then
    mkdir -p "$DIR/pg"
    chown postgres: "$DIR/pg"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/pg" -A trust -U postgres --no-sync >"$DIR/pg-init.log" 2>&1 \
      || { cat "$DIR/pg-init.log" >&2; die "initdb failed"; }
  fi
  touch "$DIR/pg.log" && chown postgres: "$DIR/pg.log"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w -t 60 \
    -o "-p $PG_PORT -k $DIR/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
    || die "PostgreSQL did not start"
  wait_until PostgreSQL pg_up
}

pg_stop() {
  [ -f "$DIR/pg/postmaster.pid" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w -t 60 stop >/dev/null || die "PostgreSQL did not stop"
}

my_start() {
  mkdir -p "$DIR/my/data" "$DIR/my/tmp"
  cat >"$DIR/my/my.cnf" <<EOF
[mysqld]
user = mysql
datadir = $DIR/my/data
tmpdir = $DIR/my/tmp
socket = $DIR/my/mysqld.sock
pid-file = $DIR/my/mariadbd.pid
log-error = $DIR/my/error.log
bind-address = 127.0.0.1
port = $MY_PORT
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
performance_schema = OFF
innodb_buffer_pool_size = 32M
innodb_log_file_size = 16M
innodb_flush_log_at_trx_commit = 2
EOF
  chown -R mysql: "$DIR/my"
  local fresh=""
  if [ ! -d "$DIR/my/data/mysql" ]; then
    mariadb-install-db --defaults-file="$DIR/my/my.cnf" --skip-test-db >"$DIR/my-init.log" 2>&1 \
      || { cat "$DIR/my-init.log" >&2; die "mariadb-install-db failed"; }
    fresh=1
  fi
  setsid /usr/sbin/mariadbd --defaults-file="$DIR/my/my.cnf" >>"$DIR/my/error.log" 2>&1 </dev/null &
  disown || true
  wait_until "MariaDB's socket" test -S "$DIR/my/mysqld.sock"
  if [ -n "$fresh" ]; then
    mariadb --no-defaults -uroot --socket="$DIR/my/mysqld.sock" -e "
      CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
      GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
  fi
  wait_until MariaDB my_up
}

my_stop() {
  local pid; pid=$(my_pid 2>/dev/null) || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  die "MariaDB did not stop in 60 s"
}

check_ports() {
  for port in "$PG_PORT" "$MY_PORT"; do
    if ss -Htln "sport = :$port" | grep -q .; then
      echo "faultdb.sh: port $port is taken by another process (set FAULTDB_PG_PORT / FAULTDB_MY_PORT)" >&2
      exit 1
    fi
  done
}

which_server() {
  case "${1:-}" in
    postgres | mariadb) ;;
    *) echo "faultdb.sh: postgres or mariadb expected" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  start)
    [ "$(id -u)" = 0 ] || { echo "faultdb.sh: run as root" >&2; exit 1; }
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL server binaries missing: apt-get install postgresql"
    [ -x /usr/sbin/mariadbd ] || die "MariaDB server missing: apt-get install mariadb-server"
    if pg_up && my_up; then echo "faultdb: already running"; exit 0; fi
    pg_up || my_up || check_ports
    mkdir -p "$DIR" && chmod 755 "$DIR"
    pg_up || pg_start
    my_up || my_start
    echo "faultdb: PostgreSQL on $PG_PORT, MariaDB on $MY_PORT"
    ;;
  stop)
    pg_stop
    my_stop
    rm -rf "$DIR"
    echo "faultdb: stopped"
    ;;
  status)
    pg_up && echo "PostgreSQL $PG_PORT: up" || echo "PostgreSQL $PG_PORT: down"
    my_up && echo "MariaDB $MY_PORT: up" || echo "MariaDB $MY_PORT: down"
    pg_up && my_up
    ;;
  down)
    which_server "${2:-}"
    if [ "$2" = postgres ]; then pg_stop; else my_stop; fi
    echo "faultdb: $2 down"
    ;;
  up)
    which_server "${2:-}"
    if [ "$2" = postgres ]; then pg_up || pg_start; else my_up || my_start; fi
    echo "faultdb: $2 up"
    ;;
  urls)
    echo "postgres://postgres@127.0.0.1:$PG_PORT/${2:-postgres} mysql://root@127.0.0.1:$MY_PORT/${2:-mysql}"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
    ;;
esac

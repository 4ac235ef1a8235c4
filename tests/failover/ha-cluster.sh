#!/bin/bash
# Vendored from the team's shared tools (../shared/tools/ha-cluster.sh, next to FIELD_NOTES.md "HA PostgreSQL"),
# unchanged but for this note: CI runs on a clean clone where ../shared does not exist. tests/failover/conftest.py
# runs it with PGAF_BASE = a fresh temporary folder and PGAF_PORT = three free ports of its own, so two runs on one
# machine do not collide (the defaults below, /tmp/pgaf-cluster and 6000-6002, are for a shell by hand).
#
# pg_auto_failover on loopback: 1 monitor + 2 data nodes (primary + synchronous standby).
# Debian 12: apt-get install -y pg-auto-failover-cli postgresql-15-auto-failover
#
# usage: ha-cluster.sh start                 create (first time) and start monitor, node1, node2; wait for primary+secondary
#        ha-cluster.sh stop                  pg_autoctl stop every node (standby, primary, then monitor)
#        ha-cluster.sh destroy               stop, then rm -rf $BASE
#        ha-cluster.sh kill-primary [MODE]   MODE: node (default) SIGKILL keeper+postgres of the primary (= host crash)
#                                               postmaster      SIGKILL only the postmaster (keeper restarts it)
#                                               stop            pg_autoctl stop (fast shutdown) of the primary's keeper
#                                               failover        pg_autoctl perform failover (orchestrated)
#                                         prints the name of the node that was primary
#        ha-cluster.sh start-node NAME       (re)start one node's keeper (e.g. the killed old primary: it rejoins as standby)
#        ha-cluster.sh wait-healthy [SECS]   wait until one primary + one secondary
#        ha-cluster.sh tune [fast|aggressive|default]  monitor health-check settings (reloaded live)
#        ha-cluster.sh status | uri | primary | events
# Env: PGAF_BASE (default: a folder under the temp dir), PGAF_PORT (monitor port, default 6000; nodes use +1, +2),
#      PGAF_TUNE=fast|aggressive|default (applied by start; default fast)
set -euo pipefail

BASE=${PGAF_BASE:-${TMPDIR:-/tmp}/pgaf-cluster}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
MPORT=${PGAF_PORT:-6000}
DB=${PGAF_DB:-app}
NODES=(node1 node2)
declare -A PORT=([monitor]=$MPORT [node1]=$((MPORT + 1)) [node2]=$((MPORT + 2)))
MON_URI="postgres://autoctl_node@127.0.0.1:$MPORT/pg_auto_failover?sslmode=disable"
MON_SQL="host=127.0.0.1 port=$MPORT dbname=pg_auto_failover user=autoctl_node"
MON_SUPER="host=127.0.0.1 port=$MPORT dbname=pg_auto_failover user=postgres"

# Postgres refuses to run as root: run pg_autoctl as "postgres" when we are root.
# XDG_* dirs keep pg_autoctl's cfg/state/pid files inside $BASE (XDG_RUNTIME_DIR must exist, else /tmp/pg_autoctl is used).
ENVV=(env -i "XDG_CONFIG_HOME=$BASE/xdg/config" "XDG_DATA_HOME=$BASE/xdg/share" "XDG_RUNTIME_DIR=$BASE/xdg/run"
      "HOME=$BASE" "PATH=$PGBIN:/usr/bin:/bin" "LANG=C.UTF-8")
if [ "$(id -u)" = 0 ]; then AS_PG=(runuser -u postgres -- "${ENVV[@]}"); OWNER=postgres; else AS_PG=("${ENVV[@]}"); OWNER=$(id -un); fi

pgdata() { echo "$BASE/$1/pgdata"; }
pidfile() { echo "$BASE/xdg/run/pg_autoctl$(pgdata "$1")/pg_autoctl.pid"; }
keeper_pid() { local f; f=$(pidfile "$1"); [ -s "$f" ] && head -1 "$f" || true; }
alive() { local p; p=$(keeper_pid "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
autoctl() { "${AS_PG[@]}" pg_autoctl "$@"; }
msql() { psql "$MON_SQL" -XAtc "$1"; }
log() { echo "$(date +%T.%3N) $*" >&2; }

run_keeper() {  # start "pg_autoctl run" for node $1 in its own session, detached
  local n=$1
  alive "$n" && return 0
  setsid "${AS_PG[@]}" pg_autoctl run --pgdata "$(pgdata "$n")" >>"$BASE/logs/$n.log" 2>&1 </dev/null &
  for _ in $(seq 100); do alive "$n" && return 0; sleep 0.1; done
  log "keeper $n did not start, see $BASE/logs/$n.log"; return 1
}

state_of() { msql "select reportedstate||'/'||goalstate from pgautofailover.node where nodename='$1'" 2>/dev/null || true; }

wait_state() {  # node, wanted reported=goal state, timeout seconds
  local end=$((SECONDS + ${3:-60}))
  while [ $SECONDS -lt $end ]; do [ "$(state_of "$1")" = "$2/$2" ] && return 0; sleep 0.2; done
  log "timeout waiting for $1 to be $2 (now: $(state_of "$1"))"; return 1
}

primary() { msql "select nodename from pgautofailover.node where reportedstate in ('primary','wait_primary','single') and goalstate=reportedstate order by nodeid limit 1"; }

wait_healthy() {  # exactly one primary and one secondary, both converged
  local end=$((SECONDS + ${1:-90}))
  while [ $SECONDS -lt $end ]; do
    [ "$(msql "select string_agg(reportedstate::text, ',' order by reportedstate) from pgautofailover.node where reportedstate=goalstate" 2>/dev/null)" = "primary,secondary" ] && return 0
    sleep 0.2
  done
  log "cluster not healthy after ${1:-90}s"; return 1
}

conf_override() {  # applied after pg_auto_failover's include line; it sizes shared_buffers to 25% of RAM otherwise
  cat >>"$1/postgresql.conf" <<'EOF'
# --- test overrides (must stay after the pg_auto_failover include) ---
shared_buffers = '128MB'
maintenance_work_mem = '64MB'
effective_cache_size = '1GB'
wal_keep_size = '256MB'
# a standby whose primary vanished retries every wal_retrieve_retry_interval (5s) and a promote request
# can wait for that sleep to end: seen as +5 s failovers ("Waiting for postgres to promote")
wal_retrieve_retry_interval = '500ms'
EOF
}

COMMON=(--hostname 127.0.0.1 --auth trust --no-ssl)

cmd_start() {
  install -d -o "$OWNER" -m 700 "$BASE" "$BASE/xdg" "$BASE/xdg/config" "$BASE/xdg/share" "$BASE/xdg/run" "$BASE/logs"
  for d in monitor "${NODES[@]}"; do install -d -o "$OWNER" -m 700 "$BASE/$d"; done
  # monitor
  if [ ! -f "$(pgdata monitor)/PG_VERSION" ]; then
    log "creating monitor on port ${PORT[monitor]}"
    autoctl create monitor --pgdata "$(pgdata monitor)" --pgport "${PORT[monitor]}" "${COMMON[@]}" >>"$BASE/logs/monitor.log" 2>&1
    autoctl config set --pgdata "$(pgdata monitor)" postgresql.listen_addresses 127.0.0.1 >/dev/null  # default is '*'
    conf_override "$(pgdata monitor)"
  fi
  run_keeper monitor
  for _ in $(seq 100); do msql "select 1" >/dev/null 2>&1 && break; sleep 0.1; done
  cmd_tune "${PGAF_TUNE:-fast}" >/dev/null   # test-speed health checks (PGAF_TUNE=default keeps stock values)
  # data nodes: the first one registers as "single", the second does pg_basebackup from it
  for n in "${NODES[@]}"; do
    if [ ! -f "$(pgdata "$n")/PG_VERSION" ]; then
      log "creating $n on port ${PORT[$n]}"
      autoctl create postgres --pgdata "$(pgdata "$n")" --pgport "${PORT[$n]}" --listen 127.0.0.1 --name "$n" \
        --dbname "$DB" --monitor "$MON_URI" "${COMMON[@]}" >>"$BASE/logs/$n.log" 2>&1
      if [ "$n" = node1 ]; then conf_override "$(pgdata "$n")"; fi   # node2 inherits postgresql.conf via pg_basebackup
    fi
    run_keeper "$n"
    if [ "$n" = node1 ] && [ -z "$(state_of node2)" ]; then wait_state node1 single 60; fi
  done
  wait_healthy 90
  log "cluster up: $(cmd_uri)"
}

cmd_stop() {
  local p order=() prim
  prim=$(primary 2>/dev/null || true)   # stop standbys first, then the primary, then the monitor: no failover
  for n in "${NODES[@]}"; do if [ "$n" != "$prim" ]; then order+=("$n"); fi; done
  if [ -n "$prim" ]; then order+=("$prim"); fi
  for n in "${order[@]}" monitor; do
    p=$(keeper_pid "$n")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
      autoctl stop --pgdata "$(pgdata "$n")" >/dev/null 2>&1 || kill -TERM "$p" 2>/dev/null || true
      for _ in $(seq 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$p" 2>/dev/null; then log "$n keeper $p still alive, SIGKILL its process group"; kill -KILL -- "-$(ps -o pgid= -p "$p" | tr -d ' ')" || true; fi
    fi
    # postgres may survive a killed keeper: stop it by its own pid file
    if [ -f "$(pgdata "$n")/postmaster.pid" ]; then
      local pm; pm=$(head -1 "$(pgdata "$n")/postmaster.pid")
      if kill -0 "$pm" 2>/dev/null; then "${AS_PG[@]}" pg_ctl -D "$(pgdata "$n")" -m fast -w stop >/dev/null 2>&1 || true; fi
    fi
  done
  log "stopped"
}

cmd_kill_primary() {
  local mode=${1:-node} p n
  n=$(primary); [ -n "$n" ] || { log "no primary"; return 1; }
  case $mode in
    node)        # = host crash: keeper, postmaster and all postgres children at once. Postgres children call
                 # setsid(), so they are NOT in the keeper's process group: kill them by pid as well.
                 local pm kids; p=$(keeper_pid "$n"); pm=$(head -1 "$(pgdata "$n")/postmaster.pid")
                 kids=$(ps -o pid= --ppid "$pm" || true)
                 kill -KILL -- "-$(ps -o pgid= -p "$p" | tr -d ' ')" $pm $kids 2>/dev/null || true
                 ;;
    postmaster)  kill -KILL "$(head -1 "$(pgdata "$n")/postmaster.pid")" ;;
    stop)        autoctl stop --pgdata "$(pgdata "$n")" >/dev/null ;;
    failover)    autoctl perform failover --pgdata "$(pgdata monitor)" >>"$BASE/logs/perform.log" 2>&1 ;;
    *) log "unknown mode $mode"; return 2 ;;
  esac
  echo "$n"
}

cmd_tune() {  # fast: ~5-6 s failover; aggressive: ~2-3 s; default: stock values (~50 s). Reloaded live (sighup GUCs).
  local args=() kv set
  case ${1:-fast} in
    fast)       set="health_check_period=1000 health_check_timeout=1000 health_check_max_retries=1 health_check_retry_delay=500
                     node_considered_unhealthy_timeout=2000 primary_demote_timeout=3000 startup_grace_period=2000" ;;
    aggressive) set="health_check_period=500 health_check_timeout=500 health_check_max_retries=1 health_check_retry_delay=200
                     node_considered_unhealthy_timeout=1000 primary_demote_timeout=1000 startup_grace_period=1000" ;;
    default)    set="health_check_period health_check_timeout health_check_max_retries health_check_retry_delay
                     node_considered_unhealthy_timeout primary_demote_timeout startup_grace_period" ;;
    *) log "tune: fast|aggressive|default"; return 2 ;;
  esac
  for kv in $set; do   # ALTER SYSTEM cannot run inside a transaction block: one -c per statement
    if [ "$1" = default ]; then args+=(-c "ALTER SYSTEM RESET pgautofailover.$kv")
    else args+=(-c "ALTER SYSTEM SET pgautofailover.${kv%%=*} = ${kv#*=}"); fi
  done
  psql "$MON_SUPER" -Xq "${args[@]}" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 0.5
  psql "$MON_SUPER" -XAtc "select name||'='||setting from pg_settings where name like 'pgautofailover.%' order by 1"
}

cmd_uri() { autoctl show uri --pgdata "$(pgdata monitor)" --formation default; }

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  destroy) cmd_stop; rm -rf "$BASE" ;;
  kill-primary) shift; cmd_kill_primary "$@" ;;
  start-node) run_keeper "$2" ;;
  wait-healthy) wait_healthy "${2:-90}" ;;
  tune) cmd_tune "${2:-fast}" ;;
  status) autoctl show state --pgdata "$(pgdata monitor)" ;;
  events) autoctl show events --pgdata "$(pgdata monitor)" --count "${2:-20}" ;;
  uri) cmd_uri ;;
  primary) primary ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# Private ClickHouse instances for the test suite.
#
# Only Debian's packages are reachable (no container registries), so this uses
# bookworm's clickhouse-server 18.16. Every instance is self-contained in one
# directory, so tests can run several side by side, and stop/restart one on the
# same ports and data.
#
#   clickhouse.sh install                  install server + client (as root)
#   clickhouse.sh bin                      print the server binary path
#   clickhouse.sh client-bin               print the client binary path
#   clickhouse.sh start DIR [HTTP TCP]     start (or find running) instance in DIR,
#                                          print its URL, e.g. http://127.0.0.1:41234
#   clickhouse.sh stop DIR                 stop the instance in DIR
#
# Environment: CLICKHOUSE_START_TIMEOUT (seconds, default 60),
#              CLICKHOUSE_SERVER_BIN / CLICKHOUSE_CLIENT_BIN (override lookup).
set -euo pipefail

die() { echo "clickhouse.sh: $*" >&2; exit 1; }

# Debian puts the server in /usr/sbin, which is not on every user's PATH.
server_bin() {
  local b=${CLICKHOUSE_SERVER_BIN:-}
  [[ -n $b ]] || b=$(command -v clickhouse-server 2>/dev/null || true)
  [[ -n $b ]] || { [[ -x /usr/sbin/clickhouse-server ]] && b=/usr/sbin/clickhouse-server; }
  [[ -n $b ]] || return 1
  echo "$b"
}

client_bin() {
  local b=${CLICKHOUSE_CLIENT_BIN:-}
  [[ -n $b ]] || b=$(command -v clickhouse-client 2>/dev/null || true)
  [[ -n $b ]] || return 1
  echo "$b"
}

cmd_install() {
  if server_bin >/dev/null && client_bin >/dev/null; then return 0; fi
  [[ $(id -u) -eq 0 ]] || die "install needs root (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # The package's postinst starts its own system-wide server on 8123/9000 as
  # soon as it is installed; that would squat on well-known ports and eat
  # memory. A policy-rc.d answering 101 makes invoke-rc.d skip the start.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local pkgs=(clickhouse-server clickhouse-client)
  # Try without refreshing the package lists first: it is much faster when
  # they are already current, and `update` only helps when they are stale.
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
  }
  # On a machine running systemd the unit is also enabled for the next boot.
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
  fi
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  server_bin >/dev/null || die "clickhouse-server still missing after install"
  client_bin >/dev/null || die "clickhouse-client still missing after install"
}

# Alive = exists and not a zombie: a stopped server whose parent (the shell that
# started it) is gone may linger as a zombie if PID 1 does not reap children.
alive() {
  local pid=$1 state
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

# PID of the server owning DIR, if it runs. Checks the command line so that a
# stale pid file pointing at a recycled PID is never trusted.
running_pid() {
  local dir=$1 pid cmd
  [[ -f $dir/pid ]] || return 1
  pid=$(<"$dir/pid")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"--config-file=$dir/config.xml"* ]] || return 1
  echo "$pid"
}

# Plain bash HTTP so that curl is not a dependency of a fresh machine.
http_get() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$2" >&3 && cat <&3' _ "$1" "$2" 2>/dev/null
}

# Ready = /ping answers "Ok." and a query response carries our display name
# (/ping itself sends no such header), which proves the answer comes from the
# server just started, not from another one already holding the port.
ready() {
  local port=$1 name=$2 resp
  resp=$(http_get "$port" /ping) || return 1
  [[ $resp == *$'\r\n\r\nOk.'* ]] || return 1
  resp=$(http_get "$port" "/?query=SELECT%201") || return 1
  [[ $resp == *$'\r\nX-ClickHouse-Server-Display-Name: '"$name"$'\r\n'* ]]
}

# Two distinct free loopback ports. Binding port 0 lets the kernel choose; the
# tiny race before the server binds them is handled by retrying start.
free_ports() {
  if command -v python3 >/dev/null; then
    python3 - <<'EOF'
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))
EOF
  else
    local p ports=()
    while ((${#ports[@]} < 2)); do
      p=$((20000 + RANDOM % 40000))
      [[ " ${ports[*]-} " == *" $p "* ]] && continue
      # A refused connection means nobody listens there.
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ports+=("$p")
    done
    echo "${ports[@]}"
  fi
}

write_config() {
  local dir=$1 http=$2 tcp=$3 name=$4
  # No interserver_http_port (replication only): one port fewer to collide.
  # No query_log/part_log: less background work and disk churn in tests.
  # 18.16 has no max_server_memory_usage; memory is bounded through small
  # caches and the per-query / all-queries limits in users.xml instead.
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>information</level>
    <log>$dir/log/server.log</log>
    <errorlog>$dir/log/server.err.log</errorlog>
    <size>10M</size>
    <count>2</count>
  </logger>
  <display_name>$name</display_name>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>0</uncompressed_cache_size>
  <max_concurrent_queries>64</max_concurrent_queries>
  <!-- Above HTTP clients' idle-pool timeouts, so a pooled connection is not
       closed by the server just as the client reuses it. -->
  <keep_alive_timeout>10</keep_alive_timeout>
  <!-- In 18.16, DROP PARTITION and TRUNCATE leave the source parts of earlier
       merges/mutations on disk until old_parts_lifetime (default 8 min) runs
       out; a restart before that loads them and the removed rows come back.
       Short lifetime brings that window down to the next background cleanup
       (about half a minute) for tests restarting a server on the same data.
       ALTER ... DELETE and DROP TABLE are not affected. -->
  <merge_tree>
    <old_parts_lifetime>1</old_parts_lifetime>
  </merge_tree>
</yandex>
EOF
  # background_pool_size is read from the default profile in 18.16; 16 merge
  # threads on a 2-core machine only compete with the tests.
  cat >"$dir/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>2000000000</max_memory_usage>
      <max_memory_usage_for_all_queries>4000000000</max_memory_usage_for_all_queries>
      <use_uncompressed_cache>0</use_uncompressed_cache>
      <background_pool_size>4</background_pool_size>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
EOF
}

# Error log of the last attempt only: the file keeps earlier runs' errors.
show_logs() {
  local dir=$1
  echo "--- $dir/log/stdout.log" >&2
  tail -n 20 "$dir/log/stdout.log" >&2 2>/dev/null || true
  echo "--- $dir/log/server.err.log (this start)" >&2
  tail -c "+$((log_offset + 1))" "$dir/log/server.err.log" 2>/dev/null | tail -n 30 >&2 || true
}

# One attempt: 0 = up, 1 = server exited (e.g. port taken), 2 = timed out.
try_start() {
  local dir=$1 http=$2 tcp=$3 bin pid deadline name
  bin=$(server_bin) || die "clickhouse-server not installed (run: $0 install)"
  name="leanloop-$$-$RANDOM$RANDOM"
  write_config "$dir" "$http" "$tcp" "$name"
  # Own session and no inherited stdio: a caller that captures this script's
  # output (a Rust test using Command::output) must see EOF when we exit, and
  # the server must not die with the caller's terminal or process group.
  log_offset=$(stat -c %s "$dir/log/server.err.log" 2>/dev/null || echo 0)
  setsid "$bin" --config-file="$dir/config.xml" \
    </dev/null >"$dir/log/stdout.log" 2>&1 &
  pid=$!
  disown "$pid"  # no "Killed" job notice from bash if it has to be killed
  echo "$pid" >"$dir/pid"
  deadline=$((SECONDS + ${CLICKHOUSE_START_TIMEOUT:-60}))
  while ((SECONDS < deadline)); do
    if ready "$http" "$name"; then return 0; fi
    alive "$pid" || return 1
    sleep 0.2
  done
  return 2
}

cmd_start() {
  local dir=${1:?usage: start DIR [HTTP_PORT TCP_PORT]} http=${2:-} tcp=${3:-} pid attempt rc ports
  log_offset=0  # set by try_start, read by show_logs
  [[ -z $http || -n $tcp ]] || die "give both HTTP_PORT and TCP_PORT, or neither"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)   # absolute: the server resolves paths on its own
  if pid=$(running_pid "$dir"); then
    local cur; cur=$(<"$dir/http_port")
    [[ -z $http || $http == "$cur" ]] || die "$dir already runs on port $cur, not $http"
    echo "http://127.0.0.1:$cur"
    return 0
  fi
  mkdir -p "$dir"/{data,tmp,log,user_files,format_schemas}
  for attempt in 1 2 3; do
    if [[ -z ${2:-} ]]; then
      ports=$(free_ports) || die "could not pick free ports"
      read -r http tcp <<<"$ports"
    fi
    rc=0; try_start "$dir" "$http" "$tcp" || rc=$?
    if ((rc == 0)); then
      echo "$http" >"$dir/http_port"
      echo "$tcp" >"$dir/tcp_port"
      echo "http://127.0.0.1:$http"
      return 0
    fi
    if ((rc == 2)); then
      kill -KILL "$(<"$dir/pid")" 2>/dev/null || true
      echo "clickhouse.sh: server in $dir not answering /ping on $http after ${CLICKHOUSE_START_TIMEOUT:-60}s" >&2
      break
    fi
    # Exited early: with self-chosen ports a lost port race is worth a retry.
    [[ -z ${2:-} ]] && ((attempt < 3)) || break
  done
  rm -f "$dir/pid"
  show_logs "$dir"
  die "failed to start ClickHouse in $dir"
}

cmd_stop() {
  local dir=${1:?usage: stop DIR} pid deadline
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  pid=$(running_pid "$dir") || { rm -f "$dir/pid"; return 0; }
  # SIGTERM lets ClickHouse finish in-flight writes and release its lock on
  # data/status; SIGKILL only if it hangs.
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + 30))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  if alive "$pid"; then
    echo "clickhouse.sh: $pid ignored SIGTERM for 30s, killing" >&2
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  fi
  rm -f "$dir/pid"
}

case ${1:-} in
  install) cmd_install ;;
  bin) server_bin || die "clickhouse-server not installed" ;;
  client-bin) client_bin || die "clickhouse-client not installed" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac

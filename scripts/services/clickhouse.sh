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

SCRIPT_NAME=clickhouse.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start_timeout=${CLICKHOUSE_START_TIMEOUT:-60}

server_bin() { find_bin "${CLICKHOUSE_SERVER_BIN:-}" clickhouse-server /usr/sbin/clickhouse-server; }
client_bin() { find_bin "${CLICKHOUSE_CLIENT_BIN:-}" clickhouse-client; }

cmd_install() {
  if server_bin >/dev/null && client_bin >/dev/null; then return 0; fi
  apt_install_no_start clickhouse-server clickhouse-server clickhouse-client
  server_bin >/dev/null || die "clickhouse-server still missing after install"
  client_bin >/dev/null || die "clickhouse-client still missing after install"
}

# What the command line of DIR's server contains (see running_pid).
cmdline_marker() { echo "--config-file=$1/config.xml"; }

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

show_logs() {
  local dir=$1
  echo "--- $dir/log/stdout.log" >&2
  tail -n 20 "$dir/log/stdout.log" >&2 2>/dev/null || true
  # Error log of the last attempt only: the file keeps earlier runs' errors.
  show_log_since "$dir/log/server.err.log" "$log_offset"
}

# One attempt on the ports HTTP and TCP, or on free ones if HTTP is empty:
# 0 = up (its ports recorded in DIR), 1 = server exited (e.g. port taken),
# 2 = timed out.
try_start() {
  local dir=$1 http=$2 tcp=$3 bin name ports rc=0
  if [[ -z $http ]]; then
    ports=$(free_ports 2) || die "could not pick free ports"
    read -r http tcp <<<"$ports"
  fi
  bin=$(server_bin) || die "clickhouse-server not installed (run: $0 install)"
  name="leanloop-$$-$RANDOM$RANDOM"
  write_config "$dir" "$http" "$tcp" "$name"
  log_offset=$(file_size "$dir/log/server.err.log")
  : >"$dir/log/stdout.log"  # this start's output only
  spawn "$dir/pid" "$dir/log/stdout.log" "$bin" --config-file="$dir/config.xml"
  await_ready "$(<"$dir/pid")" "$start_timeout" ready "$http" "$name" || rc=$?
  case $rc in
    0) echo "$http" >"$dir/http_port"; echo "$tcp" >"$dir/tcp_port" ;;
    2) warn "server in $dir not answering /ping on $http after ${start_timeout}s" ;;
  esac
  return "$rc"
}

cmd_start() {
  local dir=${1:?usage: start DIR [HTTP_PORT TCP_PORT]} http=${2:-} tcp=${3:-} cur
  log_offset=0  # set by try_start, read by show_logs
  [[ -z $http || -n $tcp ]] || die "give both HTTP_PORT and TCP_PORT, or neither"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)   # absolute: the server resolves paths on its own
  if running_pid "$dir/pid" "$(cmdline_marker "$dir")" >/dev/null; then
    cur=$(<"$dir/http_port")
    [[ -z $http || $http == "$cur" ]] || die "$dir already runs on port $cur, not $http"
    echo "http://127.0.0.1:$cur"
    return 0
  fi
  mkdir -p "$dir"/{data,tmp,log,user_files,format_schemas}
  if start_attempts "$http" try_start "$dir" "$http" "$tcp"; then
    echo "http://127.0.0.1:$(<"$dir/http_port")"
    return 0
  fi
  rm -f "$dir/pid"
  show_logs "$dir"
  die "failed to start ClickHouse in $dir"
}

cmd_stop() {
  local dir=${1:?usage: stop DIR}
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  # SIGTERM lets ClickHouse finish in-flight writes and release its lock on
  # data/status; SIGKILL only if it hangs for 30s.
  stop_server "$dir/pid" "$(cmdline_marker "$dir")" 30
}

case ${1:-} in
  install) cmd_install ;;
  bin) server_bin || die "clickhouse-server not installed" ;;
  client-bin) client_bin || die "clickhouse-client not installed" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac

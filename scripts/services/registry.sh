#!/usr/bin/env bash
# Private container registries for the test suite.
#
# Only Debian's packages are reachable (no container registries), so this uses
# bookworm's docker-registry (CNCF distribution 2.8). Every instance is
# self-contained in one directory (config, blobs, log, pid), so tests can run
# several side by side. The Docker daemon trusts registries on 127.0.0.0/8
# over plain HTTP by default, so `docker push 127.0.0.1:PORT/...` needs no
# daemon configuration.
#
#   registry.sh install                    install docker-registry (as root)
#   registry.sh bin                        print the registry binary path
#   registry.sh start DIR [PORT]           start (or find running) instance in DIR,
#                                          print its address, e.g. 127.0.0.1:41234
#   registry.sh stop DIR                   stop the instance in DIR
#
# Environment: REGISTRY_START_TIMEOUT (seconds, default 30),
#              REGISTRY_BIN (override lookup).
set -euo pipefail

SCRIPT_NAME=registry.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start_timeout=${REGISTRY_START_TIMEOUT:-30}

registry_bin() { find_bin "${REGISTRY_BIN:-}" docker-registry /usr/bin/docker-registry; }

cmd_install() {
  if registry_bin >/dev/null; then return 0; fi
  apt_install_no_start docker-registry docker-registry
  registry_bin >/dev/null || die "docker-registry still missing after install"
}

# What the command line of DIR's registry contains (see running_pid).
cmdline_marker() { echo "serve $1/config.yml"; }

# Status line and headers of GET /v2/. curl when present, else plain bash HTTP,
# so that curl is not a dependency of a fresh machine.
v2_headers() {
  local port=$1
  if command -v curl >/dev/null; then
    curl -fsS -m 2 -o /dev/null -D - "http://127.0.0.1:$port/v2/" 2>/dev/null
  else
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
      printf "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && cat <&3' _ "$port" 2>/dev/null
  fi
}

# Ready = /v2/ answers 200 and carries our instance header (set through
# http.headers in the config), which proves the answer comes from the registry
# just started, not from another one already holding the port.
ready() {
  local port=$1 name=$2 resp
  resp=$(v2_headers "$port") || return 1
  [[ $resp == "HTTP/"*" 200"* ]] || return 1
  [[ $resp == *$'\nX-Leanloop-Registry: '"$name"$'\r'* ]]
}

write_config() {
  local dir=$1 port=$2 name=$3
  # delete.enabled lets tests remove manifests; the in-memory blob descriptor
  # cache keeps the filesystem driver from re-stat'ing blobs on every request.
  # A fixed http.secret only silences the "generated random secret" warning.
  # Pushes still log "blob unknown" errors: the client's HEAD probes for
  # layers the registry does not have yet.
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: $name
  headers:
    X-Content-Type-Options: [nosniff]
    X-Leanloop-Registry: [$name]
EOF
}

show_logs() { show_log_since "$1/registry.log" "$log_offset"; }

# One attempt on PORT, or on a free port if PORT is empty: 0 = up (its port
# recorded in DIR/port), 1 = registry exited (e.g. port taken), 2 = timed out.
try_start() {
  local dir=$1 port=$2 bin name rc=0
  [[ -n $port ]] || port=$(free_ports 1) || die "could not pick a free port"
  bin=$(registry_bin) || die "docker-registry not installed (run: $0 install)"
  name="leanloop-$$-$RANDOM$RANDOM"
  write_config "$dir" "$port" "$name"
  log_offset=$(file_size "$dir/registry.log")
  spawn "$dir/pid" "$dir/registry.log" "$bin" serve "$dir/config.yml"
  await_ready "$(<"$dir/pid")" "$start_timeout" ready "$port" "$name" || rc=$?
  case $rc in
    0) echo "$port" >"$dir/port" ;;
    2) warn "registry in $dir not answering /v2/ on $port after ${start_timeout}s" ;;
  esac
  return "$rc"
}

cmd_start() {
  local dir=${1:?usage: start DIR [PORT]} port=${2:-} cur
  log_offset=0  # set by try_start, read by show_logs
  [[ -z $port || $port =~ ^[0-9]+$ ]] || die "PORT must be a number, not $port"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)   # absolute: the config names paths inside DIR
  if running_pid "$dir/pid" "$(cmdline_marker "$dir")" >/dev/null; then
    cur=$(<"$dir/port")
    [[ -z $port || $port == "$cur" ]] || die "$dir already runs on port $cur, not $port"
    echo "127.0.0.1:$cur"
    return 0
  fi
  mkdir -p "$dir/data"
  if start_attempts "$port" try_start "$dir" "$port"; then
    echo "127.0.0.1:$(<"$dir/port")"
    return 0
  fi
  rm -f "$dir/pid"
  show_logs "$dir"
  die "failed to start the registry in $dir"
}

cmd_stop() {
  local dir=${1:?usage: stop DIR}
  [[ -d $dir ]] || return 0
  dir=$(cd "$dir" && pwd)
  stop_server "$dir/pid" "$(cmdline_marker "$dir")" 15
}

case ${1:-} in
  install) cmd_install ;;
  bin) registry_bin || die "docker-registry not installed" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac

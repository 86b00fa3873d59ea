# shellcheck shell=bash
# What the service scripts in this folder (clickhouse.sh, registry.sh) share.
# Both run private servers for the test suite, every instance self-contained
# in one directory, and manage them the same way: install Debian's package
# without letting it start a system-wide server, start the server detached on
# free loopback ports and retry a lost port race, trust a pid file only after
# checking the process's command line, stop with SIGTERM and then SIGKILL.
#
# Sourced, never run. The sourcing script sets SCRIPT_NAME (its file name,
# which prefixes every message); whatever else differs between the services
# (program names, pid files, timeouts, how readiness is probed) is passed in
# as arguments.

warn() { echo "$SCRIPT_NAME: $*" >&2; }
die() { warn "$@"; exit 1; }

# Path of the program NAME: OVERRIDE if set, else NAME on PATH, else FALLBACK
# if that is executable (Debian puts servers in /usr/sbin, which is not on
# every user's PATH).
find_bin() {
  local b=$1 name=$2 fallback=${3:-}
  [[ -n $b ]] || b=$(command -v "$name" 2>/dev/null || true)
  if [[ -z $b && -n $fallback && -x $fallback ]]; then b=$fallback; fi
  [[ -n $b ]] || return 1
  echo "$b"
}

# Installs the Debian packages PKG... (as root) without starting the systemd
# unit UNIT they bring.
apt_install_no_start() {
  local unit=$1; shift
  [[ $(id -u) -eq 0 ]] || die "install needs root (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # A package's postinst starts its system-wide server as soon as it is
  # installed; that would squat on well-known ports and eat memory. A
  # policy-rc.d answering 101 makes invoke-rc.d (and deb-systemd-invoke) skip
  # the start.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  # Try without refreshing the package lists first: it is much faster when
  # they are already current, and `update` only helps when they are stale.
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
  }
  # On a machine running systemd the unit is also enabled for the next boot.
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
}

# Alive = exists and not a zombie: a stopped server whose parent (the shell
# that started it) is gone may linger as a zombie if PID 1 does not reap
# children.
alive() {
  local pid=$1 state
  [[ -r /proc/$pid/stat ]] || return 1
  state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z ]]
}

# The PID in PIDFILE, if that process runs and its command line contains
# MARKER (which names the instance's config). Checking the command line means
# a stale pid file pointing at a recycled PID is never trusted.
running_pid() {
  local pidfile=$1 marker=$2 pid cmd
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"$marker"* ]] || return 1
  echo "$pid"
}

# N distinct free loopback ports, separated by spaces. Binding port 0 lets the
# kernel choose; the tiny race before the server binds them is handled by
# retrying the start (start_attempts).
free_ports() {
  local n=$1
  if command -v python3 >/dev/null; then
    # All sockets stay bound until every port is read, so no two are equal.
    python3 - "$n" <<'EOF'
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))
EOF
  else
    local p ports=()
    while ((${#ports[@]} < n)); do
      p=$((20000 + RANDOM % 40000))
      [[ " ${ports[*]-} " == *" $p "* ]] && continue
      # A refused connection means nobody listens there.
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ports+=("$p")
    done
    echo "${ports[@]}"
  fi
}

# Size of FILE in bytes, 0 while it does not exist: where this start's lines
# in a log that keeps earlier runs' lines begin (see show_log_since).
file_size() {
  stat -c %s "$1" 2>/dev/null || echo 0
}

# The last lines LOG got after it was OFFSET bytes long, on stderr.
show_log_since() {
  local log=$1 offset=$2
  echo "--- $log (this start)" >&2
  tail -c "+$((offset + 1))" "$log" 2>/dev/null | tail -n 30 >&2 || true
}

# Runs the server command CMD... detached, appends its output to LOG and
# records its PID in PIDFILE.
spawn() {
  local pidfile=$1 log=$2 pid; shift 2
  # Own session and no inherited stdio: a caller that captures the script's
  # output (a Rust test using Command::output) must see EOF when the script
  # exits, and the server must not die with the caller's terminal or process
  # group.
  setsid "$@" </dev/null >>"$log" 2>&1 &
  pid=$!
  disown "$pid"  # no "Killed" job notice from bash if it has to be killed
  echo "$pid" >"$pidfile"
}

# Polls READY... (a command) until it succeeds: 0 = ready, 1 = the server PID
# exited first (e.g. its port was taken), 2 = not ready after TIMEOUT seconds.
# A server that timed out is killed: the caller gives up on it and forgets its
# pid file, so nothing else would ever stop it.
await_ready() {
  local pid=$1 timeout=$2 deadline; shift 2
  deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if "$@"; then return 0; fi
    alive "$pid" || return 1
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  return 2
}

# Runs ATTEMPT... (one start, returning as await_ready does) up to three times
# and returns the last attempt's status. NAMED is the port the caller asked
# for, empty if the attempt picks free ones. Only an early exit on self-chosen
# ports is tried again (on fresh ones): another process most likely took a
# port between picking and binding it. A named port, or a server too slow to
# come up, would fail the same way again.
start_attempts() {
  local named=$1 attempt rc; shift
  for attempt in 1 2 3; do
    rc=0; "$@" || rc=$?
    ((rc == 1 && attempt < 3)) && [[ -z $named ]] || return "$rc"
  done
}

# Succeeds once PID has exited; fails if it still runs after SECS seconds.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  ! alive "$pid"
}

# Stops the server PIDFILE records (if running_pid trusts it, see there for
# MARKER) and removes PIDFILE. SIGTERM lets it shut down cleanly; SIGKILL
# follows only if it still runs after GRACE seconds.
stop_server() {
  local pidfile=$1 marker=$2 grace=$3 pid
  if pid=$(running_pid "$pidfile" "$marker"); then
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "$grace"; then
      warn "$pid ignored SIGTERM for ${grace}s, killing"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || true
    fi
  fi
  rm -f "$pidfile"
}

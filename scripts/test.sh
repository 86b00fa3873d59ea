#!/usr/bin/env bash
# Runs every Leanloop test on a fresh machine: installs and starts what the
# tests need, then runs the whole suite. A missing service fails the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cache="${LEANLOOP_CACHE:-$HOME/.cache/leanloop}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
mkdir -p "$cache"

step() { printf '\n== %s\n' "$*"; }

# Real SDK clients (PyPI) for the compatibility tests, and schemathesis for
# the API fuzz test.
step "python SDK clients"
if ! command -v python3 >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3 python3-venv
fi
venv="$cache/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv "$venv"; }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/clients/requirements.txt
export LEANLOOP_TEST_PYTHON="$venv/bin/python"
"$LEANLOOP_TEST_PYTHON" -c "import segment.analytics, posthog" \
  || { echo "python SDK clients are not importable" >&2; exit 1; }
"$venv/bin/schemathesis" --version \
  || { echo "schemathesis is not installed in $venv" >&2; exit 1; }

# ClickHouse (Debian's 18.16) on a free loopback port, its data under the
# build directory. Tests that need a server fail, not skip, without it.
step "ClickHouse"
services="$root/scripts/services"
# One EXIT trap for every service started here; each stop copes with a
# service that never started (unset directory or nothing running in it).
ch_dir="" reg_dir=""
cleanup() {
  [ -z "$ch_dir" ] || "$services/clickhouse.sh" stop "$ch_dir" >/dev/null 2>&1 || true
  [ -z "$reg_dir" ] || "$services/registry.sh" stop "$reg_dir" >/dev/null 2>&1 || true
  if [ -n "$reg_dir" ]; then
    "$services/docker.sh" cleanup-label leanloop.test=1 || true
  fi
}
trap cleanup EXIT
"$services/clickhouse.sh" install
ch_dir="$CARGO_TARGET_DIR/clickhouse-test"
"$services/clickhouse.sh" stop "$ch_dir" >/dev/null 2>&1 || true
rm -rf "$ch_dir"
LEANLOOP_TEST_CLICKHOUSE_URL="$("$services/clickhouse.sh" start "$ch_dir")"
export LEANLOOP_TEST_CLICKHOUSE_URL
echo "ClickHouse at $LEANLOOP_TEST_CLICKHOUSE_URL"

# The delivery pipeline runs its steps as containers on the local Docker
# Engine. Nothing can be pulled, so the base image is built here from Debian's
# static busybox, and images are pushed to a private registry (Debian's
# docker-registry) on a free loopback port, which the daemon trusts over plain
# HTTP. Tests label what they create leanloop.test=1; the EXIT trap removes it.
step "Docker Engine, base image and registry"
docker info >/dev/null 2>&1 \
  || { echo "Docker Engine is not reachable (docker info failed); the delivery tests need a running daemon" >&2; exit 1; }
LEANLOOP_TEST_BASE_IMAGE=leanloop/busybox:latest
"$services/docker.sh" base-image "$LEANLOOP_TEST_BASE_IMAGE" >/dev/null
export LEANLOOP_TEST_BASE_IMAGE
"$services/registry.sh" install
reg_dir="$CARGO_TARGET_DIR/registry-test"
"$services/registry.sh" stop "$reg_dir" >/dev/null 2>&1 || true
rm -rf "$reg_dir"
LEANLOOP_TEST_REGISTRY="$("$services/registry.sh" start "$reg_dir")"
export LEANLOOP_TEST_REGISTRY
echo "base image $LEANLOOP_TEST_BASE_IMAGE, registry at $LEANLOOP_TEST_REGISTRY"

# Headless Chromium and chromedriver (Debian's) for the browser SDK's
# end-to-end tests, which fail, not skip, without them.
step "Chromium and chromedriver"
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium chromium-driver \
    || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }
fi
LEANLOOP_TEST_CHROMEDRIVER="${LEANLOOP_TEST_CHROMEDRIVER:-$(command -v chromedriver || true)}"
LEANLOOP_TEST_CHROMIUM="${LEANLOOP_TEST_CHROMIUM:-$(command -v chromium || true)}"
export LEANLOOP_TEST_CHROMEDRIVER LEANLOOP_TEST_CHROMIUM
"$LEANLOOP_TEST_CHROMEDRIVER" --version \
  || { echo "chromedriver is not installed (Debian package chromium-driver)" >&2; exit 1; }
[ -x "$LEANLOOP_TEST_CHROMIUM" ] \
  || { echo "chromium is not installed (Debian package chromium)" >&2; exit 1; }

log="$(mktemp)"
status=0

# The browser SDK's unit tests: Node's built-in runner, no packages.
step "JS SDK (node --test)"
if ! command -v node >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs
fi
# TAP named, as newer Node versions report otherwise by default.
(cd sdk-js && node --test --test-reporter=tap test/) 2>&1 | tee -a "$log" || status=1

step "cargo test (release profile: DuckDB is compiled once, optimised)"
set +e
cargo test --release --workspace --locked --lib --bins --tests 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e

# The pipeline tests label every Docker object they make; none may outlive them.
left=$( { docker ps -aq --filter label=leanloop.test=1; docker network ls -q --filter label=leanloop.test=1;
          docker volume ls -q --filter label=leanloop.test=1; } | wc -l)
if [ "$left" -ne 0 ]; then
  echo "the tests left $left Docker containers, networks or volumes labelled leanloop.test=1" >&2
  status=1
fi
# One closing line for the whole run, summed over every test binary and Node.
# A run counts only when both runners ran tests and none was set aside:
# an ignored, skipped or todo test is a failure here, never a silent pass.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) {
                 if ($(i+1) ~ /^passed/) { p += $i; cargo += $i }
                 if ($(i+1) ~ /^failed/) f += $i
                 if ($(i+1) ~ /^ignored/) s += $i } }
     /^# pass / { p += $3; node += $3 } /^# (fail|cancelled) / { f += $3 }
     /^# (skipped|todo) / { s += $3 }
     END { printf "tests: %d passed, %d failed, %d set aside (cargo %d, node %d passed)\n", p, f, s, cargo, node }' "$log")
echo "$summary"
case "$summary" in
  *", 0 set aside (cargo 0,"* | *"node 0 passed)") echo "a test runner ran no tests" >&2; status=1 ;;
  *", 0 set aside"*) ;;
  *) echo "tests were ignored or skipped; each must run" >&2; status=1 ;;
esac
rm -f "$log"
exit "$status"

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

# Real SDK clients (PyPI) for the compatibility tests.
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

step "cargo test (release profile: DuckDB is compiled once, optimised)"
log="$(mktemp)"
set +e
cargo test --release --workspace --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"

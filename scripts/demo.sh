#!/usr/bin/env bash
# Runs kv-epp on its embedded default. Until the ext_proc server lands this is
# the routing debugger: it hashes a demo prompt with both backends and shows
# they agree. Set-up (Node 24, npm ci, addon, TypeScript) runs first, idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
# shellcheck source=scripts/env.sh
source scripts/env.sh
tokens="$(seq -s, 1 40)"
echo "kv-epp hash --block-size 16 --tokens 1..40 (2 full blocks; the last 8 tokens are not hashed):"
for backend in native js; do
  printf '%-7s ' "$backend"
  node dist/src/cli/main.js hash --block-size 16 --backend "$backend" --tokens "$tokens"
done

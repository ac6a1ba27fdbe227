#!/usr/bin/env bash
# Runs kv-epp on its embedded default: static endpoints (config/endpoints.default.yaml,
# two loopback workers), the built-in o200k_base tokenizer, approximate routing,
# plaintext ext_proc on :9002 and gRPC health on :9003 — no Kubernetes or NATS.
# Set-up (Node 24, npm ci, the Rust addon, TypeScript) runs first, idempotently.
# Extra arguments go to `kv-epp serve` (e.g. --grpc-port=9102).
set -euo pipefail
cd "$(dirname "$0")/.."
KV_EPP_SKIP_TEST_TOOLS=1 bash scripts/setup.sh >&2
# shellcheck source=scripts/env.sh
source scripts/env.sh
exec node --max-semi-space-size=4 --initial-old-space-size=256 --single-threaded-gc dist/src/cli/main.js serve --endpoints-file config/endpoints.default.yaml \
  --secure-serving=false --kv-events=false "$@"

#!/usr/bin/env bash
# Regenerates test/fixtures/events/{dynamo,dynamo-json}/: real KV-event payloads from
# Dynamo 1.6.1's KvEventPublisher on a private loopback nats-server, and what Dynamo's
# own RadixTree reports for them (expected.json). See scripts/capture-events/capture.py.
# Needs .venv-tools (bash scripts/install-test-tools.sh); KV_EPP_DYNAMO_PYTHON picks
# another Python with ai-dynamo-runtime 1.6.1 and msgspec, KV_EPP_NATS_SERVER another
# nats-server. Usage: scripts/capture-events/capture.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${KV_EPP_DYNAMO_PYTHON:-.venv-tools/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "[capture-events] no $PY: run 'bash scripts/install-test-tools.sh'" >&2
  exit 1
fi
exec "$PY" scripts/capture-events/capture.py "$@"

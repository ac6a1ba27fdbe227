"""A Dynamo 1.6.1 worker with the local KV indexer on, driven from a test.

Needs ``ai-dynamo-runtime`` 1.6.1 (``.venv-tools``). Usage::

    python dynamo_worker_query.py '{"endpoint": "ns.comp.ep", "workdir": "/tmp/x",
        "workers": [{"name": "a", "worker_id": "<u64>", "dp_rank": 0, "block_size": 4}]}'

Starts ``DistributedRuntime(loop, "file", "tcp", event_plane="nats")`` (file
discovery in ``<workdir>/kv``, NATS at ``NATS_SERVER``; loopback-only
listeners, ``DYN_SYSTEM_PORT=-1``, private ``HOME``) and one
``KvEventPublisher(..., enable_local_indexer=True)`` per worker entry: each
publishes to ``namespace.<ns>.component.<c>.endpoint.<e>.kv-events`` and
serves ``worker_kv_query_source_<publisher hex>`` on the TCP request plane,
advertised under ``<workdir>/kv/v1/event_sources``.

Prints ``{"event": "ready", "kv_dir": ..}``, then reads one JSON command per
stdin line and answers one line each:

- ``{"op": "stored", "worker": "a", "token_ids": [..], "block_hashes": ["<u64>", ..],
  "parent_hash": "<u64>" | null}`` -> ``{"event": "ok"}``
- ``{"op": "removed", "worker": "a", "block_hashes": ["<u64>", ..]}`` -> ``{"event": "ok"}``
- ``{"op": "quit"}`` (or stdin closed): shuts down.

u64s cross as decimal strings (JSON numbers would not survive JavaScript);
the Python API takes block hashes as signed i64 (two's complement), they
arrive on the wire as msgpack uint64.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

# The shared helpers of the event-publishing driver (same directory, on sys.path when run as a script).
from dynamo_events import emit, i64, loopback_env, make_publishers


async def main(cfg: dict[str, Any]) -> int:
    kv = loopback_env(cfg["workdir"])
    from dynamo._core import DistributedRuntime

    loop = asyncio.get_running_loop()
    rt = DistributedRuntime(loop, "file", "tcp", event_plane="nats")
    endpoint = rt.endpoint(cfg["endpoint"])
    pubs = make_publishers(endpoint, cfg["workers"], enable_local_indexer=True)
    emit({"event": "ready", "kv_dir": kv})
    code = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line == "":
            break
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        try:
            pub, bs = pubs[cmd["worker"]]
            if op == "stored":
                hashes = [i64(h) for h in cmd["block_hashes"]]
                parent = cmd.get("parent_hash")
                pub.publish_stored(
                    token_ids=[int(t) for t in cmd["token_ids"]],
                    num_block_tokens=[bs] * len(hashes),
                    block_hashes=hashes,
                    parent_hash=None if parent is None else i64(parent),
                )
            elif op == "removed":
                pub.publish_removed([i64(h) for h in cmd["block_hashes"]])
            else:
                raise ValueError(f"unknown op {op!r}")
            emit({"event": "ok"})
        except Exception as e:  # noqa: BLE001 - reported to the caller
            emit({"event": "error", "error": f"{type(e).__name__}: {e}"})
            code = 1
    for pub, _ in pubs.values():
        pub.shutdown()
    rt.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(json.loads(sys.argv[1]))))

"""Dynamo 1.6.1 as the oracle for KV events (ai-dynamo-runtime in .venv-tools).

Two subcommands, both reading one JSON document from argv[2]:

``relay``: Dynamo's own vLLM/SGLang conversion. For each entry
``{"worker_id": "<u64>", "dp_rank": r, "zmq_endpoint": "tcp://…"}`` a
``KvEventPublisher(endpoint, worker_id, kv_block_size, dp_rank,
zmq_endpoint=…)`` in relay mode: it subscribes to the engine's ZMQ socket,
converts the batches (local hashes from ``token_ids``, partial blocks dropped,
LoRA name / cache salt in the seed, medium → storage tier, dedup) and
republishes ``RouterEvent``s on the NATS event plane (``NATS_SERVER``) under
``namespace.<ns>.component.<comp>.endpoint.<ep>.kv-events``. Document:
``{"endpoint": "ns.comp.ep", "block_size": 4, "relays": [...]}``. The runtime
is ``DistributedRuntime(loop, "file", "tcp", event_plane="nats")``; the caller
sets ``DYN_FILE_KV``, the loopback hosts, ``DYN_SYSTEM_PORT=-1`` and ``HOME``.
Prints ``{"event": "ready"}`` once every relay is constructed, then runs until
stdin closes.

``radix``: Dynamo's ``RadixTree`` fed with the relay's NATS messages.
Document: ``{"envelopes": ["<hex>", …], "queries": [{"name", "tokens",
"block_size", "lora_name"?, "cache_namespace"?}]}``. Each envelope is the
event plane's msgpack map ``{publisher_id, sequence, published_at, topic,
payload}``; ``payload`` is a msgpack array of ``RouterEvent`` maps. Each
device-tier ``RouterEvent`` becomes ``RadixTree.apply_event(worker_id,
json(event))`` (the tree takes the inner ``KvCacheEvent`` as JSON; u64 stay
exact: Python ints); an event the tree refuses (it raises, e.g. "Failed to
find block") is counted by message and skipped, as Dynamo's router logs and
goes on. Lower tiers (``host_pinned``, ``disk``, ``external``) are
counted and skipped, as Dynamo's router keeps them out of the device index.
Prints one JSON object: per query the local hashes
(``compute_block_hash_for_seq``) and ``find_matches`` scores, plus counts.
All u64 are printed as decimal strings.

``zmq-plane``: Dynamo's own ZMQ event plane (``event_plane="zmq"``, file
discovery): a direct-mode ``KvEventPublisher`` whose PUB socket (4 frames:
topic, publisher id, sequence, ``0x01`` + u32 length + envelope) is found in
the ``v1/event_channels`` discovery record and printed as
``{"event": "bound", "endpoint": url}``. A raw pyzmq SUB in this process
collects the same messages. Until stdin gets a line (the test's "my
subscriber has it"), a sentinel store is re-published every 20 ms (slow
joiners); then the document's ``calls`` (``publish_stored`` /
``publish_removed``) and an end marker, and once the end marker is back the
RadixTree result of everything this SUB saw is printed with ``"event":
"result"``. Runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import sys
import time
from typing import Any

import msgspec

U64 = (1 << 64) - 1


async def relay(doc: dict[str, Any]) -> int:
    from dynamo._core import DistributedRuntime, KvEventPublisher

    loop = asyncio.get_running_loop()
    rt = DistributedRuntime(loop, "file", "tcp", event_plane="nats")
    endpoint = rt.endpoint(doc.get("endpoint", "kvepp.relay.ep"))
    publishers = []
    for r in doc["relays"]:
        publishers.append(
            KvEventPublisher(
                endpoint,
                worker_id=int(r["worker_id"]),
                kv_block_size=int(doc["block_size"]),
                dp_rank=int(r.get("dp_rank", 0)),
                zmq_endpoint=r["zmq_endpoint"],
            )
        )
    print(json.dumps({"event": "ready", "relays": len(publishers)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    for p in publishers:
        p.shutdown()
    rt.shutdown()
    return 0


def radix_result(envelopes: list[bytes], queries_in: list[dict[str, Any]]) -> dict[str, Any]:
    from dynamo._core import RadixTree, compute_block_hash_for_seq

    tree = RadixTree()
    applied = 0
    skipped_tiers: dict[str, int] = {}
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    for raw in envelopes:
        env = msgspec.msgpack.decode(raw)
        events = msgspec.msgpack.decode(env["payload"])
        if isinstance(events, dict):
            events = [events]
        for ev in events:
            tier = ev.get("storage_tier", "device")
            if tier != "device":
                skipped_tiers[tier] = skipped_tiers.get(tier, 0) + 1
                continue
            inner = ev["event"]
            data = inner["data"]
            kind = data if isinstance(data, str) else next(iter(data))
            kinds[kind] = kinds.get(kind, 0) + 1
            try:
                tree.apply_event(int(ev["worker_id"]), json.dumps(inner).encode("utf-8"))
                applied += 1
            except Exception as e:  # the router logs these and goes on
                msg = str(e)
                errors[msg] = errors.get(msg, 0) + 1
    queries = []
    for q in queries_in:
        local = compute_block_hash_for_seq(
            list(q["tokens"]),
            int(q["block_size"]),
            lora_name=q.get("lora_name"),
            cache_namespace=q.get("cache_namespace"),
        )
        scores = tree.find_matches(local).scores
        queries.append(
            {
                "name": q["name"],
                "local_hashes": [str(h & U64) for h in local],
                "scores": sorted(
                    (
                        {"worker_id": str(w), "dp_rank": int(r), "blocks": int(n)}
                        for (w, r), n in scores.items()
                    ),
                    key=lambda s: (int(s["worker_id"]), s["dp_rank"]),
                ),
            }
        )
    return {
        "applied": applied,
        "errors": errors,
        "kinds": kinds,
        "skipped_tiers": skipped_tiers,
        "queries": queries,
    }


def radix(doc: dict[str, Any]) -> int:
    envelopes = [bytes.fromhex(hx) for hx in doc["envelopes"]]
    print(json.dumps(radix_result(envelopes, doc["queries"])), flush=True)
    return 0


def find_zmq_endpoint(discovery: str, timeout_s: float = 30.0) -> str:
    """The ZMQ URL of the kv-events channel in file discovery (`v1/event_channels/…`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(discovery, "v1", "event_channels", "*")):
            try:
                with open(path, encoding="utf-8") as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue  # half-written
            transport = rec.get("transport", {})
            if rec.get("topic") == "kv-events" and transport.get("kind") == "Zmq":
                return transport["config"]["endpoint"]
        time.sleep(0.01)
    raise RuntimeError(f"no Zmq kv-events channel in {discovery}")


async def zmq_plane(doc: dict[str, Any]) -> int:
    """Dynamo's ZMQ event plane: a direct-mode KvEventPublisher, watched by a raw SUB."""
    import zmq
    from dynamo._core import DistributedRuntime, KvEventPublisher

    loop = asyncio.get_running_loop()
    rt = DistributedRuntime(loop, "file", "tcp", event_plane="zmq")
    endpoint = rt.endpoint(doc.get("endpoint", "kvepp.zmqplane.ep"))
    block = int(doc["block_size"])
    pub = KvEventPublisher(
        endpoint,
        worker_id=int(doc["worker_id"]),
        kv_block_size=block,
        dp_rank=int(doc.get("dp_rank", 0)),
    )
    url = find_zmq_endpoint(os.environ["DYN_FILE_KV"])
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(url)
    print(json.dumps({"event": "bound", "endpoint": url}), flush=True)

    envelopes: list[bytes] = []
    frames_seen: list[list[bytes]] = []

    def drain() -> None:
        while True:
            try:
                frames = sub.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            frames_seen.append(frames)
            body = frames[-1]
            envelopes.append(body[5:])

    def holds(h: int) -> bool:
        for raw in envelopes:
            for ev in msgspec.msgpack.decode(msgspec.msgpack.decode(raw)["payload"]):
                stored = ev["event"]["data"]
                if isinstance(stored, dict) and "stored" in stored:
                    if any(b["block_hash"] == h for b in stored["stored"]["blocks"]):
                        return True
        return False

    # Slow joiners: repeat a sentinel store until this SUB has one and the test
    # (whose SUB has one too) says "go" on stdin.
    go = loop.run_in_executor(None, sys.stdin.readline)
    sentinel = doc["sentinel"]
    while True:
        pub.publish_stored(sentinel["tokens"], [block], [int(sentinel["hash"])])
        await asyncio.sleep(0.02)
        drain()
        if go.done() and envelopes:
            break
    for c in doc["calls"]:
        if c["op"] == "stored":
            pub.publish_stored(
                list(c["tokens"]),
                list(c["num_block_tokens"]),
                [int(x) for x in c["block_hashes"]],
                parent_hash=None if c.get("parent_hash") is None else int(c["parent_hash"]),
                lora_name=c.get("lora_name"),
                cache_salt=c.get("cache_salt"),
            )
        elif c["op"] == "removed":
            pub.publish_removed([int(x) for x in c["block_hashes"]])
        else:
            raise ValueError(c["op"])
    end = doc["end"]
    pub.publish_stored(end["tokens"], [block], [int(end["hash"])])
    deadline = time.monotonic() + 60
    while not holds(int(end["hash"]) & U64):
        if time.monotonic() > deadline:
            raise RuntimeError("the end marker never came back over ZMQ")
        await asyncio.sleep(0.01)
        drain()
    result = radix_result(envelopes, doc["queries"])
    result["event"] = "result"
    result["frame_counts"] = sorted({len(f) for f in frames_seen})
    result["topics"] = sorted({f[0].decode("utf-8", "replace") for f in frames_seen})
    print(json.dumps(result), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    sub.close(linger=0)
    ctx.term()
    pub.shutdown()
    rt.shutdown()
    return 0


def main() -> int:
    cmd = sys.argv[1]
    with open(sys.argv[2], encoding="utf-8") as f:
        doc = json.load(f)
    if cmd == "relay":
        return asyncio.run(relay(doc))
    if cmd == "radix":
        return radix(doc)
    if cmd == "zmq-plane":
        return asyncio.run(zmq_plane(doc))
    raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main())

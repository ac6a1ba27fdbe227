"""A vLLM/SGLang-style ZMQ KV-event publisher for tests (pyzmq + msgspec only).

Emits the engines' exact wire format (reference §2.3): per DP rank one socket,
3-frame messages ``(topic, seq u64 BE from 0, msgpack batch)`` sent with
``send_multipart``, the batch encoded by msgspec Structs declared the way vLLM
declares them in ``vllm/distributed/kv_events.py``:

* ``v0_33``: current vLLM (after vllm-project/vllm#42892, "Switch event
  structs from array to map encoding"): ``EventBatch`` stays ``array_like`` so
  the batch is ``[ts, [events], data_parallel_rank]``; ``KVCacheEvent`` has
  ``tag=True, omit_defaults=True`` and no ``array_like``, so each event is a
  map tagged ``type``. Field order and optional fields as reference §2.3
  lists them for vLLM 0.33.0 (the fields through
  ``kv_cache_spec_sliding_window`` also match the vLLM source in the search
  index; the later optional ones are never set here, so only their names
  matter): ``BlockStored`` =
  ``block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
  lora_name`` then optional ``extra_keys, group_idx, kv_cache_spec_kind,
  kv_cache_spec_sliding_window, locality, ownership, session_id,
  lookahead_token_ids`` (omitted when None); ``BlockRemoved`` =
  ``block_hashes, medium`` + optional ``group_idx, locality, ownership``.
  Hashes are unsigned 64-bit ints (``ExternalBlockHash``; msgspec writes
  values >= 2^63 as msgpack uint64).
* ``legacy``: older vLLM (the 0.10-era file: ``array_like=True, tag=True`` events, i.e.
  tagged positional arrays ``["BlockStored", block_hashes, parent_block_hash,
  token_ids, block_size, lora_id, medium]``, ``["BlockRemoved", block_hashes,
  medium]``, ``["AllBlocksCleared"]``), with hashes from Python's ``hash()``:
  signed 64-bit ints (values >= 2^63 are sent as their negative two's
  complement).

The sockets are XPUB with ``XPUB_VERBOSE``: on the wire exactly what a PUB
sends to its subscribers, but every subscription reaches this script, so it
publishes only after the expected number of subscribers per socket have
subscribed (no slow-joiner race, no sleeps).

Usage: ``python vllm_publisher.py SCENARIO.json``. Scenario::

    {"host": "127.0.0.1", "subscribers": 2, "timeout_s": 60,
     "sockets": [{"name": "a0", "topic": ""}],
     "messages": [
       {"socket": "a0", "encoding": "v0_33", "data_parallel_rank": 0,
        "events": [{"type": "BlockStored", "block_hashes": ["<u64 decimal>"],
                    "parent_block_hash": null, "token_ids": [1, 2, 3, 4],
                    "block_size": 4, "lora_id": null, "medium": "GPU",
                    "lora_name": null}]},
       {"socket": "a0", "raw": ["<hex frame>", "<hex frame>"]}]}

Hashes are decimal strings of the u64 value (converted per encoding);
``data_parallel_rank`` null or absent is omitted from the batch, as vLLM's
``omit_defaults`` does. ``raw`` messages are sent frame by frame as given
(malformed framing) and take no sequence number. Protocol on stdout, one JSON
object per line: ``{"event": "bound", "sockets": {name: url}}``, then
``{"event": "subscribed"}``, then ``{"event": "sent", "counts": {name: n}}``;
then it waits for stdin to close and exits 0.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace
from typing import Any

import msgspec
import zmq

U64 = (1 << 64) - 1


def v0_33_structs() -> SimpleNamespace:
    """vLLM 0.33 ``vllm/distributed/kv_events.py`` wire structs (hashes as ints)."""

    class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]
        data_parallel_rank: int | None = None

    class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[int]
        parent_block_hash: int | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[tuple[Any, ...] | None] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None
        locality: str | None = None
        ownership: str | None = None
        session_id: str | None = None
        lookahead_token_ids: list[int] | None = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[int]
        medium: str | None
        group_idx: int | None = None
        locality: str | None = None
        ownership: str | None = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]

    return SimpleNamespace(
        batch=KVEventBatch,
        stored=BlockStored,
        removed=BlockRemoved,
        cleared=AllBlocksCleared,
        hash=lambda v: v & U64,
    )


def legacy_structs() -> SimpleNamespace:
    """vLLM 0.10.x wire structs: tagged positional arrays, signed hashes."""

    class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]
        data_parallel_rank: int | None = None

    class KVCacheEvent(
        msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True
    ):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[int]
        parent_block_hash: int | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[int]
        medium: str | None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]

    def signed(v: int) -> int:
        v &= U64
        return v - (1 << 64) if v >= 1 << 63 else v

    return SimpleNamespace(
        batch=KVEventBatch,
        stored=BlockStored,
        removed=BlockRemoved,
        cleared=AllBlocksCleared,
        hash=signed,
    )


ENCODINGS = {"v0_33": v0_33_structs(), "legacy": legacy_structs()}
STORED_OPTIONAL = (
    "extra_keys",
    "group_idx",
    "kv_cache_spec_kind",
    "kv_cache_spec_sliding_window",
    "locality",
    "ownership",
    "session_id",
    "lookahead_token_ids",
)
REMOVED_OPTIONAL = ("group_idx", "locality", "ownership")


def build_event(enc: SimpleNamespace, ev: dict[str, Any]) -> Any:
    kind = ev["type"]
    h = enc.hash
    if kind == "BlockStored":
        parent = ev.get("parent_block_hash")
        kwargs: dict[str, Any] = dict(
            block_hashes=[h(int(x)) for x in ev["block_hashes"]],
            parent_block_hash=None if parent is None else h(int(parent)),
            token_ids=list(ev["token_ids"]),
            block_size=int(ev["block_size"]),
            lora_id=ev.get("lora_id"),
            medium=ev.get("medium"),
        )
        if "lora_name" in enc.stored.__struct_fields__:
            kwargs["lora_name"] = ev.get("lora_name")
        elif ev.get("lora_name") is not None:
            raise ValueError("the legacy encoding has no lora_name")
        for k in STORED_OPTIONAL:
            if ev.get(k) is not None:
                if k not in enc.stored.__struct_fields__:
                    raise ValueError(f"this encoding has no {k}")
                v = ev[k]
                kwargs[k] = [None if x is None else tuple(x) for x in v] if k == "extra_keys" else v
        return enc.stored(**kwargs)
    if kind == "BlockRemoved":
        kwargs = dict(block_hashes=[h(int(x)) for x in ev["block_hashes"]], medium=ev.get("medium"))
        for k in REMOVED_OPTIONAL:
            if ev.get(k) is not None:
                if k not in enc.removed.__struct_fields__:
                    raise ValueError(f"this encoding has no {k}")
                kwargs[k] = ev[k]
        return enc.removed(**kwargs)
    if kind == "AllBlocksCleared":
        return enc.cleared()
    raise ValueError(f"unknown event type {kind!r}")


def encode_batch(encoder: msgspec.msgpack.Encoder, msg: dict[str, Any]) -> bytes:
    enc = ENCODINGS[msg.get("encoding", "v0_33")]
    events = [build_event(enc, ev) for ev in msg["events"]]
    batch = enc.batch(
        ts=float(msg.get("ts", time.time())),
        events=events,
        data_parallel_rank=msg.get("data_parallel_rank"),
    )
    return encoder.encode(batch)


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        scenario = json.load(f)
    host = scenario.get("host", "127.0.0.1")
    want = int(scenario.get("subscribers", 1))
    deadline = time.monotonic() + float(scenario.get("timeout_s", 60))
    # Encode everything first: a bad scenario fails before anything is bound.
    encoder = msgspec.msgpack.Encoder()
    plan: list[tuple[str, list[bytes] | None, bytes | None]] = []
    for msg in scenario["messages"]:
        if "raw" in msg:
            plan.append((msg["socket"], [bytes.fromhex(x) for x in msg["raw"]], None))
        else:
            plan.append((msg["socket"], None, encode_batch(encoder, msg)))

    ctx = zmq.Context()
    socks: dict[str, zmq.Socket] = {}
    topics: dict[str, bytes] = {}
    urls: dict[str, str] = {}
    for s in scenario["sockets"]:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.SNDHWM, 100_000)  # vLLM's default hwm
        port = sock.bind_to_random_port(f"tcp://{host}")
        socks[s["name"]] = sock
        topics[s["name"]] = s.get("topic", "").encode("utf-8")
        urls[s["name"]] = f"tcp://{host}:{port}"
    say({"event": "bound", "sockets": urls})

    # Wait for `want` subscriptions on every socket.
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    seen = {name: 0 for name in socks}
    while any(n < want for n in seen.values()):
        left = deadline - time.monotonic()
        if left <= 0:
            say({"event": "error", "error": f"subscribers missing: {seen}"})
            return 2
        for sock, _ in poller.poll(timeout=int(left * 1000)):
            frame = sock.recv()
            if frame[:1] == b"\x01":
                name = next(n for n, s in socks.items() if s is sock)
                seen[name] += 1
    say({"event": "subscribed", "subscriptions": seen})

    seqs = {name: 0 for name in socks}
    counts = {name: 0 for name in socks}
    for name, raw, payload in plan:
        sock = socks[name]
        if raw is not None:
            sock.send_multipart(raw)
        else:
            seq = seqs[name]
            seqs[name] += 1
            sock.send_multipart((topics[name], seq.to_bytes(8, "big"), payload))
        counts[name] += 1
    say({"event": "sent", "counts": counts})

    sys.stdin.read()  # until the test closes stdin
    for sock in socks.values():
        sock.close(linger=1000)
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dynamo 1.6.1's KV-event publisher and RadixTree, driven from tests.

Needs ``ai-dynamo-runtime`` 1.6.1 and ``msgspec`` (``.venv-tools``, from
scripts/install-test-tools.sh). Every u64 crosses as a decimal string: the
worker ids and hashes used here are above 2^53 (and above 2^63), so a JSON
number would not survive a JavaScript reader.

``publish SCENARIO.json`` (``-`` = stdin is not allowed: stdin is the control
channel) runs ``KvEventPublisher`` calls against ``NATS_SERVER`` with
``DistributedRuntime(loop, "file", "tcp", event_plane="nats")``: file
discovery in ``--workdir`` (default: a temp dir), loopback-only listeners
(``DYN_TCP_RPC_HOST``, ``DYN_EVENT_PLANE_HOST``,
``DYN_TCP_RESPONSE_STREAM_HOST`` = 127.0.0.1, ``DYN_SYSTEM_PORT=-1``) and a
private ``HOME``. Scenario::

    {"endpoint": "ns.comp.ep",
     "workers": [{"name": "a", "worker_id": "<u64>", "block_size": 4, "dp_rank": 0}],
     "steps": [
       {"op": "stored", "worker": "a", "token_ids": [..], "block_hashes": ["<u64>", ..],
        "num_block_tokens": [..] (default: block_size each), "parent_hash": "<u64>" | null,
        "lora_name": "..", "cache_salt": ".."},
       {"op": "removed", "worker": "a", "block_hashes": ["<u64>", ..]},
       {"op": "batch", "worker": "a", "events": [{"type": "stored", ...}, {"type": "removed", ...}]},
       {"op": "pause", "name": "outage"}]}

Messages go to ``namespace.<ns>.component.<comp>.endpoint.<ep>.kv-events``.
The Python API takes block hashes as *signed* i64 (a hash >= 2^63 is passed as
its negative two's complement, as Dynamo's docs say) and the worker id as u64;
both arrive on the wire as msgpack uint64. Dynamo 1.6.1's Python publisher has
no "cleared" call. Protocol on stdout, one JSON object per line:
``{"event": "ready", ...}``, then per pause ``{"event": "paused", "name": ..}``
(the driver then waits for one line on stdin before going on), then
``{"event": "done", "calls": n}``; it shuts the runtime down when stdin closes
(so the NATS client can flush first). A failing call prints
``{"event": "error", "step": i, "error": ".."}`` and exits 1.

``radix DOC.json`` (``-`` = stdin) is the oracle: Dynamo's own ``RadixTree``
fed with captured event-plane messages. Document::

    {"payloads": ["<hex>", ..]} or {"dir": "D"} (D/*.bin in name order),
    "codec": "dynamo" (msgpack envelope, default) | "dynamo-json",
    "router_rules": false,
    "queries": [{"name": .., "tokens": [..], "block_size": 4,
                 "lora_name": .., "cache_namespace": ..}],
    "paths": true, "block_size": 4

Each envelope (msgpack ``{publisher_id, sequence, published_at, topic,
payload}``, decoded with ``msgspec.msgpack``) carries a msgpack array of
``RouterEvent`` maps; every device-tier ``RouterEvent`` becomes
``RadixTree.apply_event(worker_id, json(event))`` (JSON with exact integers:
Python ints). An event the tree refuses (``RuntimeError``) is counted by
reason. With ``router_rules`` the stream rules of Dynamo 1.6.1's router for a
source it cannot query for recovery are applied first (dynamo-llm
``kv_router/indexer/recovery/worker_query_state.rs`` ``observe_live_event``
and ``worker_query.rs`` ``ResetDegraded``): per (worker, dp rank), an event id
at or below the last one is ignored (``duplicate``); one above last + 1 is a
gap: the holder is cleared, then the event applied. Output: decoded events,
counts, per query the local hashes (``compute_block_hash_for_seq``) and
``find_matches`` scores, per holder the blocks in ``dump_tree_as_events()``
(``dump_blocks``: all, and those reachable from the root through its own
blocks), which of the hashes it stored it can still extend (``probes``: a
child store probed on a rebuilt copy; RadixTree exposes neither its lookup
nor its per-worker size), and with ``paths`` the scores of every
root-to-block path in that dump.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import sys
import tempfile
from typing import Any

U64 = (1 << 64) - 1
# Probe blocks (see ``radix``): hashes no test uses.
PROBE_BLOCK = 0xF00D << 48
PROBE_TOKENS = 0xBEEF << 48


def u64(v: Any) -> int:
    """A u64 from a decimal string or int (negative: two's complement)."""
    return int(v) & U64


def i64(v: Any) -> int:
    """The signed 64-bit value the Python API takes for a u64 hash."""
    x = u64(v)
    return x - (1 << 64) if x >= 1 << 63 else x


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# --- publish -----------------------------------------------------------------


def loopback_env(workdir: str) -> str:
    """Loopback-only, private Dynamo environment (before the runtime starts); returns DYN_FILE_KV."""
    for k in list(os.environ):
        if k.startswith(("DYN_", "DYNAMO_", "ETCD_")) and k != "DYN_LOG":
            del os.environ[k]
    home = os.path.join(workdir, "home")
    kv = os.path.join(workdir, "kv")
    os.makedirs(home, exist_ok=True)
    os.makedirs(kv, exist_ok=True)
    os.environ.update(
        {
            "HOME": home,
            "DYN_FILE_KV": kv,
            "DYN_SYSTEM_PORT": "-1",
            "DYN_TCP_RPC_HOST": "127.0.0.1",
            "DYN_EVENT_PLANE_HOST": "127.0.0.1",
            "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
        }
    )
    return kv


def stored_kwargs(ev: dict[str, Any], block_size: int) -> dict[str, Any]:
    tokens = [int(t) for t in ev["token_ids"]]
    hashes = [i64(h) for h in ev["block_hashes"]]
    nbt = ev.get("num_block_tokens")
    kw: dict[str, Any] = {
        "token_ids": tokens,
        "num_block_tokens": [int(n) for n in nbt] if nbt is not None else [block_size] * len(hashes),
        "block_hashes": hashes,
        "parent_hash": None if ev.get("parent_hash") is None else i64(ev["parent_hash"]),
    }
    for k in ("lora_name", "cache_salt"):
        if ev.get(k) is not None:
            kw[k] = ev[k]
    return kw


def make_publishers(
    endpoint: Any, workers: list[dict[str, Any]], **options: Any
) -> dict[str, tuple[Any, int]]:
    """One KvEventPublisher per worker entry (name, worker_id, block_size,
    dp_rank), keyed by name, with its block size; `options` go to every one."""
    from dynamo._core import KvEventPublisher

    pubs: dict[str, tuple[Any, int]] = {}
    for w in workers:
        bs = int(w["block_size"])
        pubs[w["name"]] = (
            KvEventPublisher(
                endpoint,
                worker_id=u64(w["worker_id"]),
                kv_block_size=bs,
                dp_rank=int(w.get("dp_rank", 0)),
                **options,
            ),
            bs,
        )
    return pubs


async def publish(scenario: dict[str, Any]) -> int:
    from dynamo._core import DistributedRuntime

    loop = asyncio.get_running_loop()
    rt = DistributedRuntime(loop, "file", "tcp", event_plane="nats")
    endpoint = rt.endpoint(scenario.get("endpoint", "dynamo.backend.generate"))
    pubs = make_publishers(endpoint, scenario["workers"])
    ns, comp, ep = scenario.get("endpoint", "dynamo.backend.generate").split(".")
    emit(
        {
            "event": "ready",
            "subject": f"namespace.{ns}.component.{comp}.endpoint.{ep}.kv-events",
            "workers": [{"name": w["name"], "worker_id": str(u64(w["worker_id"]))} for w in scenario["workers"]],
        }
    )
    calls = 0
    code = 0
    for i, step in enumerate(scenario["steps"]):
        op = step["op"]
        if op == "pause":
            emit({"event": "paused", "name": step.get("name", str(i)), "calls": calls})
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line == "":
                emit({"event": "aborted", "step": i})
                code = 3
                break
            continue
        pub, bs = pubs[step["worker"]]
        try:
            if op == "stored":
                pub.publish_stored(**stored_kwargs(step, bs))
            elif op == "removed":
                pub.publish_removed([i64(h) for h in step["block_hashes"]])
            elif op == "batch":
                events: list[dict[str, Any]] = []
                for ev in step["events"]:
                    if ev["type"] == "stored":
                        events.append({"type": "stored", **stored_kwargs(ev, bs)})
                    elif ev["type"] == "removed":
                        events.append({"type": "removed", "block_hashes": [i64(h) for h in ev["block_hashes"]]})
                    else:
                        raise ValueError(f"unknown batch event type {ev['type']!r}")
                pub.publish_batch(events)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the caller
            emit({"event": "error", "step": i, "error": f"{type(e).__name__}: {e}"})
            code = 1
            break
        calls += 1
    if code == 0:
        emit({"event": "done", "calls": calls})
        # Stay up until the caller has seen the messages: shutting down drops
        # whatever the NATS client has not flushed yet.
        await loop.run_in_executor(None, sys.stdin.read)
    for pub, _ in pubs.values():
        pub.shutdown()
    rt.shutdown()
    return code


# --- radix (the oracle) --------------------------------------------------------


def reason_of(err: Exception) -> str:
    m = str(err).lower()
    if "parent" in m:
        return "parent_not_found"
    if "find block" in m or "not found" in m:
        return "block_not_found"
    if "sequence" in m or "self" in m:
        return "invalid_block_sequence"
    return "error:" + str(err)


def router_events(payload: bytes, codec: str) -> tuple[dict[str, Any] | None, list[Any]]:
    """(envelope header or None, RouterEvent list) of one message."""
    import msgspec

    if codec == "dynamo-json":
        doc = json.loads(payload)
        return None, doc if isinstance(doc, list) else [doc]
    doc = msgspec.msgpack.decode(payload)
    if isinstance(doc, dict) and "payload" in doc:
        header = {k: doc[k] for k in ("publisher_id", "sequence", "published_at", "topic") if k in doc}
        events = msgspec.msgpack.decode(doc["payload"])
        return header, events if isinstance(events, list) else [events]
    return None, doc if isinstance(doc, list) else [doc]


def kind_of(data: Any) -> str:
    return data if isinstance(data, str) else next(iter(data))


def describe(ev: dict[str, Any]) -> dict[str, Any]:
    inner = ev["event"]
    data = inner["data"]
    kind = kind_of(data)
    out: dict[str, Any] = {
        "worker_id": str(ev["worker_id"]),
        "dp_rank": int(inner.get("dp_rank", 0)),
        "event_id": str(inner["event_id"]),
        "kind": kind,
        "storage_tier": ev.get("storage_tier", "device"),
    }
    if kind == "stored":
        st = data["stored"]
        out["parent_hash"] = None if st.get("parent_hash") is None else str(st["parent_hash"])
        out["block_hashes"] = [str(b["block_hash"]) for b in st["blocks"]]
        out["tokens_hashes"] = [str(b["tokens_hash"]) for b in st["blocks"]]
    elif kind == "removed":
        out["block_hashes"] = [str(h) for h in data["removed"]["block_hashes"]]
    return out


def scores_json(scores: dict[tuple[int, int], int]) -> list[dict[str, Any]]:
    rows = [{"worker_id": str(w), "dp_rank": int(r), "blocks": int(n)} for (w, r), n in scores.items() if n > 0]
    return sorted(rows, key=lambda s: (int(s["worker_id"]), s["dp_rank"]))


def radix(doc: dict[str, Any]) -> dict[str, Any]:
    from dynamo._core import RadixTree, compute_block_hash_for_seq

    if "dir" in doc:
        payloads = [open(f, "rb").read() for f in sorted(glob.glob(os.path.join(doc["dir"], "*.bin")))]
    else:
        payloads = [bytes.fromhex(h) for h in doc["payloads"]]
    codec = doc.get("codec", "dynamo")
    rules = bool(doc.get("router_rules", False))
    tree = RadixTree()
    # Every apply_event call made, to rebuild the same tree for probing.
    calls: list[tuple[int, bytes]] = []

    def apply(worker: int, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode("utf-8")
        calls.append((worker, data))
        tree.apply_event(worker, data)

    applied = {"stored": 0, "removed": 0, "cleared": 0}
    rejected: dict[str, int] = {}
    skipped: dict[str, int] = {}
    gaps: list[dict[str, Any]] = []
    publisher_gaps: list[dict[str, Any]] = []
    last_id: dict[tuple[int, int], int] = {}
    last_seq: dict[int, int] = {}
    decoded: list[dict[str, Any]] = []
    envelopes: list[dict[str, Any]] = []
    for payload in payloads:
        header, events = router_events(payload, codec)
        if header is not None:
            pid, seq = int(header["publisher_id"]), int(header["sequence"])
            if pid in last_seq and seq > last_seq[pid] + 1:
                publisher_gaps.append({"publisher_id": str(pid), "expected": str(last_seq[pid] + 1), "got": str(seq)})
            last_seq[pid] = seq
            envelopes.append({"publisher_id": str(pid), "sequence": str(seq), "events": len(events)})
        for ev in events:
            d = describe(ev)
            decoded.append(d)
            worker, inner = int(ev["worker_id"]), ev["event"]
            key = (worker, int(inner.get("dp_rank", 0)))
            eid = int(inner["event_id"])
            if rules:
                last = last_id.get(key)
                if last is not None and eid <= last:
                    rejected["duplicate"] = rejected.get("duplicate", 0) + 1
                    continue
                if last is not None and eid > last + 1:
                    gaps.append(
                        {"worker_id": str(worker), "dp_rank": key[1], "expected": str(last + 1), "got": str(eid)}
                    )
                    apply(worker, {"event_id": eid, "data": "cleared", "dp_rank": key[1]})
                last_id[key] = eid
            if d["storage_tier"] != "device" or ev.get("residency_domain", "worker") != "worker":
                skipped[d["storage_tier"]] = skipped.get(d["storage_tier"], 0) + 1
                continue
            try:
                apply(worker, inner)
                applied[d["kind"]] += 1
            except RuntimeError as e:
                r = reason_of(e)
                rejected[r] = rejected.get(r, 0) + 1

    out: dict[str, Any] = {
        "messages": len(payloads),
        "envelopes": envelopes,
        "events": decoded,
        "applied": applied,
        "rejected": rejected,
        "gaps": gaps,
        "publisher_gaps": publisher_gaps,
        "skipped_tiers": skipped,
    }
    queries = []
    for q in doc.get("queries", []):
        local = compute_block_hash_for_seq(
            [int(t) for t in q["tokens"]],
            int(q.get("block_size", doc.get("block_size", 0))),
            lora_name=q.get("lora_name"),
            cache_namespace=q.get("cache_namespace"),
        )
        queries.append(
            {
                "name": q.get("name"),
                "local_hashes": [str(u64(h)) for h in local],
                "scores": scores_json(tree.find_matches(local).scores),
            }
        )
    out["queries"] = queries

    # The tree's own snapshot: blocks per holder, and every root-to-block path.
    # A dumped store names a parent by the holder's hash; Dynamo also dumps a holder's
    # blocks below one it lost (radix_tree.rs apply_removed, "TODO(CORRECTNESS): …
    # emitted by dumps without a valid worker-specific parent"): such a parent is
    # resolved through another holder's block with that hash (the same node).
    dump = [json.loads(s) for s in tree.dump_tree_as_events()]
    dumped: dict[tuple[int, int], int] = {}
    reachable: dict[tuple[int, int], int] = {}
    own: dict[tuple[int, int, int], tuple[list[int], bool]] = {}
    anyp: dict[int, list[int]] = {}
    leaves: set[tuple[int, ...]] = set()

    def place(ev: dict[str, Any], base: list[int], reach: bool) -> None:
        w, inner = int(ev["worker_id"]), ev["event"]
        r = int(inner.get("dp_rank", 0))
        path = list(base)
        blocks = inner["data"]["stored"]["blocks"]
        for blk in blocks:
            path.append(int(blk["tokens_hash"]))
            own[(w, r, int(blk["block_hash"]))] = (list(path), reach)
            anyp.setdefault(int(blk["block_hash"]), list(path))
        dumped[(w, r)] = dumped.get((w, r), 0) + len(blocks)
        if reach:
            reachable[(w, r)] = reachable.get((w, r), 0) + len(blocks)
        leaves.add(tuple(path))

    pending = list(dump)
    while pending:
        rest = []
        for ev in pending:
            w, inner = int(ev["worker_id"]), ev["event"]
            parent = inner["data"]["stored"].get("parent_hash")
            key = (w, int(inner.get("dp_rank", 0)), int(parent) if parent is not None else 0)
            if parent is None:
                place(ev, [], True)
            elif key in own:
                place(ev, *own[key])
            else:
                rest.append(ev)
        if len(rest) == len(pending):
            # Stuck: place one through another holder's block, then go on.
            for i, ev in enumerate(rest):
                parent = int(ev["event"]["data"]["stored"]["parent_hash"])
                if parent in anyp:
                    place(rest.pop(i), anyp[parent], False)
                    break
            else:
                break
        pending = rest
    out["unresolved_dump_events"] = len(pending)
    out["dump_blocks"] = [
        {"worker_id": str(w), "dp_rank": r, "blocks": n, "reachable": reachable.get((w, r), 0)}
        for (w, r), n in sorted(dumped.items())
    ]
    # Which of its stored hashes each holder can still extend (store a child under).
    # RadixTree does not expose its per-worker lookup (nor its size), so each hash
    # the holder ever stored is probed on a rebuilt copy: a child store under it
    # succeeds or fails with ParentBlockNotFound, and the child is removed again.
    # Dynamo keeps lookup entries that cannot be extended (a stored hash that
    # differs from the one the shared node already carries), so the count of
    # usable hashes is a lower bound of its tree size, not the size.
    probe = RadixTree()
    for worker, data in calls:
        try:
            probe.apply_event(worker, data)
        except RuntimeError:
            pass
    candidates: dict[tuple[int, int], list[int]] = {}
    for d in decoded:
        if d["kind"] == "stored":
            key = (int(d["worker_id"]), d["dp_rank"])
            candidates.setdefault(key, []).extend(int(h) for h in d["block_hashes"])
    probes = []
    n = 0
    for (w, r), hashes in sorted(candidates.items()):
        distinct = list(dict.fromkeys(hashes))
        usable = []
        for h in distinct:
            n += 1
            child = {"block_hash": PROBE_BLOCK + n, "tokens_hash": PROBE_TOKENS + n}
            st = {"event_id": 0, "data": {"stored": {"parent_hash": h, "blocks": [child]}}, "dp_rank": r}
            try:
                probe.apply_event(w, json.dumps(st).encode("utf-8"))
            except RuntimeError:
                continue
            usable.append(str(h))
            rm = {"event_id": 0, "data": {"removed": {"block_hashes": [child["block_hash"]]}}, "dp_rank": r}
            probe.apply_event(w, json.dumps(rm).encode("utf-8"))
        probes.append(
            {"worker_id": str(w), "dp_rank": r, "candidates": [str(h) for h in distinct], "usable": usable}
        )
    out["probes"] = probes
    if doc.get("paths"):
        out["paths"] = [
            {"local_hashes": [str(h) for h in p], "scores": scores_json(tree.find_matches(list(p)).scores)}
            for p in sorted(leaves)
        ]
    return out


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    p.add_argument("scenario")
    p.add_argument("--workdir")
    r = sub.add_parser("radix")
    r.add_argument("doc")
    args = ap.parse_args()
    if args.cmd == "publish":
        with open(args.scenario, encoding="utf-8") as f:
            scenario = json.load(f)
        workdir = args.workdir or tempfile.mkdtemp(prefix="kv-epp-dynpub-")
        loopback_env(workdir)
        try:
            return asyncio.run(publish(scenario))
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    text = sys.stdin.read() if args.doc == "-" else open(args.doc, encoding="utf-8").read()
    emit(radix(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

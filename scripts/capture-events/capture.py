"""Captures real Dynamo 1.6.1 KV-event payloads as test fixtures.

Runs a private nats-server on 127.0.0.1, subscribes to every
``namespace.*.component.*.endpoint.*.kv-events`` subject over the raw NATS
protocol (bytes kept exactly as delivered), and drives Dynamo's
``KvEventPublisher`` (test/support/dynamo_events.py ``publish``) through the
scenario below. Writes, under ``--out`` (default test/fixtures/events):

* ``dynamo/NNNN.bin``: one NATS message body each, in arrival order (the
  event plane's msgpack envelope carrying a msgpack array of RouterEvents);
* ``dynamo-json/NNNN.bin``: the same RouterEvents as JSON (one object, or an
  array when the message carried several), the form older releases and
  JetStream mode publish. Dynamo 1.6.1 has no JSON event-plane codec (no
  ``DYN_EVENT_PLANE_CODEC`` in the runtime; the wire stays msgpack), so this
  set is derived from the capture, with the key order of serde (the same as
  the wheel's own ``RadixTree.dump_tree_as_events()`` JSON; checked here);
* ``*/query-*.json``: token ids of the queries;
* ``*/expected.json``: what Dynamo's ``RadixTree`` (same wheel) reports when
  fed those files (test/support/dynamo_events.py ``radix``): applied and
  rejected event counts, and each query's overlap, in ``kv-epp events
  replay`` form (worker ids as decimal strings, sorted by worker id, then
  dp rank).

Usage: ``scripts/capture-events/capture.sh [--out DIR]`` (needs .venv-tools
from scripts/install-test-tools.sh). Loopback only. Envelope publisher ids
and timestamps differ on every run; the events do not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.dont_write_bytecode = True  # no __pycache__ in test/support
sys.path.insert(0, os.path.join(ROOT, "test", "support"))
os.environ.setdefault("DYN_LOG", "error")  # RadixTree warns on every refused event
import dynamo_events  # noqa: E402

BLOCK = 4
A = (1 << 64) - 5  # above 2^63: the Python API takes it as u64
B = (1 << 63) + 0x1234
C = 7
SUBJECT = "namespace.*.component.*.endpoint.*.kv-events"


def toks(seed: int, n: int) -> list[int]:
    out, x = [], seed * 2654435761 % (1 << 32) or 1
    for _ in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out.append(1 + x % 50000)
    return out


def engine_hashes(tokens: list[int], salt: str = "") -> list[str]:
    """Opaque chained block hashes, as an engine would publish (blake2b, 64 bits)."""
    out, parent = [], b"root" + salt.encode()
    for i in range(len(tokens) // BLOCK):
        h = hashlib.blake2b(parent + repr(tokens[i * BLOCK : (i + 1) * BLOCK]).encode(), digest_size=8)
        parent = h.digest()
        out.append(str(int.from_bytes(parent, "big")))
    return out


P, Q, R = toks(1, 12), toks(2, 8), toks(3, 8)
MARKERS = {name: (0xC0FFEE << 40) + i for i, name in enumerate(("a", "b", "c"))}


def stored(worker: str, prefix: list[int], tokens: list[int], salt: str = "", **kw: Any) -> dict[str, Any]:
    hs = engine_hashes(prefix + tokens, salt)
    first = len(prefix) // BLOCK
    return {
        "op": "stored",
        "worker": worker,
        "token_ids": tokens,
        "block_hashes": hs[first : first + len(tokens) // BLOCK],
        "parent_hash": hs[first - 1] if first else None,
        **kw,
    }


SCENARIO: dict[str, Any] = {
    "endpoint": "dynamo.backend.generate",
    "workers": [
        {"name": "a", "worker_id": str(A), "block_size": BLOCK},
        {"name": "b", "worker_id": str(B), "block_size": BLOCK, "dp_rank": 1},
        {"name": "c", "worker_id": str(C), "block_size": BLOCK},
    ],
    "steps": [
        stored("a", [], P + Q),
        stored("b", [], P),
        {
            "op": "batch",
            "worker": "b",
            "events": [
                {"type": "stored", **stored("b", P, R)},
                {"type": "removed", "block_hashes": engine_hashes(P + R)[4:]},
            ],
        },
        stored("c", [], P, "lora", lora_name="adapter-1"),
        stored("c", [], P + Q, "salt", cache_salt="tenant-x"),
        {"op": "removed", "worker": "a", "block_hashes": engine_hashes(P + Q)[4:]},
        {"op": "removed", "worker": "b", "block_hashes": ["16045690984503098046"]},
        {**stored("b", [], R), "parent_hash": "12345678901234567890"},
    ]
    + [
        {"op": "stored", "worker": w, "token_ids": toks(900 + i, BLOCK), "block_hashes": [str(m)], "parent_hash": None}
        for i, (w, m) in enumerate(MARKERS.items())
    ],
}

QUERIES = [
    {"file": "query-tokens.json", "tokens": P + Q + [1, 2]},
    {"file": "query-lora.json", "tokens": P, "loraName": "adapter-1"},
    {"file": "query-salt.json", "tokens": P + Q, "cacheNamespace": "tenant-x"},
]


def nats_binary() -> str:
    for cand in (
        os.environ.get("KV_EPP_NATS_SERVER"),
        os.path.join(ROOT, ".venv-tools", "bin", "nats-server"),
        shutil.which("nats-server"),
    ):
        if cand and os.path.exists(cand):
            return cand
    raise SystemExit("no nats-server (run scripts/install-test-tools.sh or set KV_EPP_NATS_SERVER)")


def start_nats(tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    ports = os.path.join(tmp, "ports")
    os.makedirs(ports)
    proc = subprocess.Popen(
        [nats_binary(), "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", ports],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        for f in os.listdir(ports):
            try:
                doc = json.load(open(os.path.join(ports, f)))
                return proc, int(doc["nats"][0].rsplit(":", 1)[1])
            except (ValueError, KeyError, IndexError, OSError):
                pass
        time.sleep(0.02)
    proc.kill()
    raise SystemExit("nats-server did not start")


class Capture(threading.Thread):
    """Raw NATS subscriber: SUB + PING, then every MSG body as bytes."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")
        self.messages: list[bytes] = []
        self.file.readline()  # INFO
        self.sock.sendall(f'CONNECT {{"verbose":false}}\r\nSUB {SUBJECT} 1\r\nPING\r\n'.encode())
        while self.file.readline().strip() != b"PONG":
            pass

    def run(self) -> None:
        while True:
            line = self.file.readline()
            if not line:
                return
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                self.messages.append(self.file.read(size))
                self.file.read(2)
            elif line.startswith(b"PING"):
                self.sock.sendall(b"PONG\r\n")

    def has(self, marker: int) -> bool:
        needle = b"\xcf" + marker.to_bytes(8, "big")
        return any(needle in m for m in self.messages)


def overlap(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"workerId": s["worker_id"], "dpRank": s["dp_rank"], "blocks": s["blocks"]} for s in scores]


def expected_for(dir_: str, codec: str) -> dict[str, Any]:
    queries = [
        {
            "name": q["file"],
            "tokens": q["tokens"],
            "block_size": BLOCK,
            "lora_name": q.get("loraName"),
            "cache_namespace": q.get("cacheNamespace"),
        }
        for q in QUERIES
    ]
    r = dynamo_events.radix({"dir": dir_, "codec": codec, "router_rules": True, "queries": queries})
    qs = []
    for q, got in zip(QUERIES, r["queries"]):
        entry: dict[str, Any] = {"file": q["file"]}
        for k in ("loraName", "cacheNamespace"):
            if k in q:
                entry[k] = q[k]
        entry["overlap"] = overlap(got["scores"])
        qs.append(entry)
    return {
        "source": "Dynamo 1.6.1 RadixTree (ai-dynamo-runtime) fed these files; scripts/capture-events/capture.sh",
        "codec": codec,
        "blockSize": BLOCK,
        "messages": r["messages"],
        "applied": sum(r["applied"].values()),
        "appliedByKind": r["applied"],
        "rejected": dict(sorted(r["rejected"].items())),
        "gaps": len(r["gaps"]),
        "overlap": qs[0]["overlap"],
        "queries": qs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="capture Dynamo KV-event fixtures")
    ap.add_argument("--out", default=os.path.join(ROOT, "test", "fixtures", "events"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kv-epp-capture-")
    nats, port = start_nats(tmp)
    try:
        cap = Capture(port)
        cap.start()
        scenario_file = os.path.join(tmp, "scenario.json")
        json.dump(SCENARIO, open(scenario_file, "w"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "NATS_", "ETCD_"))}
        env.update({"NATS_SERVER": f"nats://127.0.0.1:{port}", "DYN_LOG": os.environ["DYN_LOG"], "NO_COLOR": "1"})
        pub = subprocess.Popen(
            [sys.executable, dynamo_events.__file__, "publish", scenario_file, "--workdir", os.path.join(tmp, "pub")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert pub.stdout is not None and pub.stdin is not None
        for raw in pub.stdout:
            line = json.loads(raw)
            if line["event"] == "error":
                raise SystemExit(f"publisher: {line}")
            if line["event"] == "done":
                break
        deadline = time.time() + 30
        while not all(cap.has(m) for m in MARKERS.values()):
            if time.time() > deadline:
                raise SystemExit("markers did not arrive")
            time.sleep(0.02)
        pub.stdin.close()
        pub.wait(timeout=30)
        messages = list(cap.messages)
    finally:
        nats.kill()
        nats.wait()

    for codec in ("dynamo", "dynamo-json"):
        d = os.path.join(args.out, codec)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for i, m in enumerate(messages):
            if codec == "dynamo-json":
                _, events = dynamo_events.router_events(m, "dynamo")
                m = json.dumps(events[0] if len(events) == 1 else events, separators=(",", ":")).encode()
            with open(os.path.join(d, f"{i:04d}.bin"), "wb") as f:
                f.write(m)
        for q in QUERIES:
            with open(os.path.join(d, q["file"]), "w") as f:
                json.dump(q["tokens"], f)
                f.write("\n")
        exp = expected_for(d, codec)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(exp, f, indent=2)
            f.write("\n")
        print(f"{d}: {len(messages)} messages, {json.dumps(exp['queries'])}")

    # The JSON set is the serde form: same keys, same order as the wheel's own JSON.
    from dynamo._core import RadixTree

    first = json.loads(open(os.path.join(args.out, "dynamo-json", "0000.bin")).read())
    first = first[0] if isinstance(first, list) else first
    tree = RadixTree()
    tree.apply_event(int(first["worker_id"]), json.dumps(first["event"]).encode())
    dumped = json.loads(tree.dump_tree_as_events()[0])
    assert list(dumped) == list(first), (list(dumped), list(first))
    assert list(dumped["event"]) == list(first["event"]), (dumped["event"], first["event"])
    a = json.load(open(os.path.join(args.out, "dynamo", "expected.json")))
    b = json.load(open(os.path.join(args.out, "dynamo-json", "expected.json")))
    assert a["queries"] == b["queries"] and a["applied"] == b["applied"], "codecs disagree"
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

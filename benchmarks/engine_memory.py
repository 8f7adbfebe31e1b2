"""The engine's resident memory across reconfigurations (issue 14.10): bf16, fp32, bf16, a
static cache, ... on the embedded model on the CPU, one short run after each; prints the RSS
after each, so a model or cache that is not given back shows as a step that never comes down.

    .venv/bin/python benchmarks/engine_memory.py [--compile]

--compile walks the dashboard soak's compile and flex toggles instead (tui_soak.py's first
minutes), one at a time, back to the defaults between them.

Measured on the 2-core CPU box, 2026-12-01: without malloc_trim after an unload the second
bf16 sat at 1168 MB (first: 717 MB); with it 748 MB (the allocator kept the fp32 model's heap).
--compile, same day: 718 MB first, 1383 MB at the end while a failed configuration's traceback
kept its model (each failed flex+static compile=layers +280 MB), 861 MB once the runner clears
those frames (fp32 step 1643 -> 1076 MB).
Session 8, with the mmap threshold fixed (engine/heap.py): 725, fp32 1014, bf16 756, ... fp32
1028, bf16 760 MB (before: 727, 1037, 792, ..., 1065, 836: each fp32 round trip kept ~45 MB).
"""

from __future__ import annotations

import sys

import psutil

from llmtop.engine.client import EngineClient
from llmtop.engine.protocol import Configure, Error, Generate, GuardResult, RunDone, Status

STEPS = [("bf16", {"kv": "dynamic"}), ("fp32", {"kv": "dynamic"}), ("bf16", {"kv": "dynamic"}),
         ("bf16", {"kv": "static"}), ("bf16", {"kv": "dynamic"}), ("fp32", {"kv": "dynamic"}),
         ("bf16", {"kv": "dynamic"})]
FLEX = {"attention": "flex"}
COMPILE_STEPS = [("bf16", {}), ("bf16", FLEX), ("bf16", {**FLEX, "kv": "static"}),
                 ("bf16", {**FLEX, "kv": "static", "compile": "full"}),
                 ("bf16", {**FLEX, "kv": "static", "compile": "layers"}), ("bf16", {}),
                 ("bf16", {"kv": "static"}), ("bf16", {}), ("fp32", {}), ("bf16", {}),
                 ("bf16", {"compile": "layers"}), ("bf16", {}), ("bf16", {})]


def wait(client: EngineClient, pred) -> object:
    while True:
        ev = client.get(timeout=300)
        if pred(ev):
            return ev


def split(pid: int) -> str:
    """Anonymous (heap) against file-backed (mapped libraries, the GGUF) resident memory:
    a file's pages come and go with the page cache, the heap is the engine's own."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = dict(line.split(":", 1) for line in f if line.startswith("Rss"))
        return " ".join(f"{k[3:].lower()} {int(v.split()[0]) / 1e3:.0f}" for k, v in kb.items())
    except OSError:    # not Linux
        return ""


def main() -> None:
    steps = COMPILE_STEPS if "--compile" in sys.argv[1:] else STEPS
    client = EngineClient()
    client.start()
    try:
        wait(client, lambda e: isinstance(e, Status) and e.phase == "ready")
        proc = psutil.Process(client.pid)
        first = None
        for dtype, opts in steps:
            label = " ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
            client.send(Configure(model="embedded", device="cpu", dtype=dtype, opts=opts))
            ev = wait(client, lambda e: isinstance(e, (GuardResult, Error)))
            if isinstance(ev, Error):
                wait(client, lambda e: isinstance(e, Status) and e.phase in ("ready", "error"))
                rss = proc.memory_info().rss / 1e6
                print(f"{dtype:5} {label:28} engine RSS {rss:7.0f} MB  failed: {ev.message[:60]}",
                      flush=True)
                continue
            client.send(Generate(prompt="The largest continent is", max_new_tokens=8))
            wait(client, lambda e: isinstance(e, RunDone))
            rss = proc.memory_info().rss / 1e6
            first = first or rss
            print(f"{dtype:5} {label:28} engine RSS {rss:7.0f} MB  ({rss / first:.2f}x the first)"
                  f"  {split(proc.pid)}", flush=True)
    finally:
        client.close()


if __name__ == "__main__":
    main()

"""backend=native decode speed on a GPU, side by side with gpt-fast, against the read floor.

Synthetic Llama-2-7B shape, bf16. For each (kv, batch, prompt) it builds a NativeBackend with
compile=full (compiled pieces in CUDA graphs, built before anything is timed) and times a run
of --tokens decode steps through generate_steps, the stamps the engine itself records. Prints
TPOT (mean decode gap), ITL p50 / p99, x-floor, where floor = (weight bytes + KV bytes the step
must read) / the read bandwidth measured here, and native / gpt-fast where gpt-fast ran the
same point (its own process, compile reduce-overhead, its decode_ms method: (t(N2) - t(N1)) /
(N2 - N1)), and `--preset max` of backend=hf (transformers with a static cache and CUDA
graphs, the fastest hf path) at --hf-points, on the same loaded weights and floor. Also the KV
bytes static and paged reserve for a batch of mixed prompt lengths.

    python3 benchmarks/native_decode.py [--gptfast DIR] [--points 1x128,8x128,1x2048,8x2048]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import torch

from llmtop.engine import generate, models
from llmtop.engine import spec as specs
from llmtop.engine.backends.hf import HfBackend
from llmtop.engine.backends.native import NativeBackend
from llmtop.engine.catalogue import parse_opts
from llmtop.engine.generate import Sampling
from llmtop.engine.native.graphs import KERNELS
from llmtop.engine.protocol import Generate

GPTFAST = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
import generate as G
from model import Transformer
bs, plen, n1, n2 = (int(a) for a in sys.argv[2:6])
with torch.device("meta"):
    m = Transformer.from_name("7B")
m.config.block_size = 4096   # Llama-2's context; gpt-fast's 7B entry keeps 2048, too short for 2048 + 288
m = m.to_empty(device="cuda").to(torch.bfloat16)
with torch.no_grad():
    for p in m.parameters(): p.normal_(0, 0.02)
m.freqs_cis = None
m.eval()
G.decode_one_token = torch.compile(G.decode_one_token, mode="reduce-overhead", fullgraph=True)
prompt = torch.randint(0, 31000, (plen,), device="cuda", dtype=torch.int)
def run(n):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    G.generate(m, prompt, n, batch_size=bs, interactive=False, draft_model=None, temperature=0.8, top_k=200)
    torch.cuda.synchronize(); return time.perf_counter() - t0
t = time.time(); run(n2); first = time.time() - t
print("ready", flush=True)
sys.stdin.readline()          # timed only when the caller says: alone on the card
res = [(run(n2) - run(n1)) / (n2 - n1) * 1e3 for _ in range(3)]
print(json.dumps({"bs": bs, "prompt": plen, "compile_s": round(first, 1), "ms": min(res)}), flush=True)
"""


def read_bandwidth() -> float:
    """GB/s of a read-only pass (a sum) over 4 GiB, best of 10."""
    x = torch.empty(2 ** 31, dtype=torch.bfloat16, device="cuda").normal_()
    x.sum()
    best = float("inf")
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.sum()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 1e3)
    del x
    return 2 ** 32 / best / 1e9


def timed_run(backend: Any, loaded: models.Loaded, batch: int, prompt: int | list[int],
              tokens: int) -> list[int]:
    """Stamps of one run (prompt lengths may differ per request: left-padded as the engine does)."""
    lens = prompt if isinstance(prompt, list) else [prompt] * batch
    width = max(lens)
    req = Generate(prompt_len=width, batch=batch, max_new_tokens=tokens)
    inp = generate.prepare(req, None, loaded.model.config.vocab_size, 4096, loaded.device)
    mask = torch.zeros_like(inp.attention_mask)
    for r, n in enumerate(lens):
        mask[r, width - n:] = 1
    inp.attention_mask = mask
    steps = backend.generate_steps(inp, tokens, Sampling(), set(), True, lambda: False)
    return [s.t_ns for s in steps]


def gaps_ms(stamps: list[int]) -> list[float]:
    return [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:])]


def p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class GptFast:
    """gpt-fast's points, one process each, all compiled at once at the start (their compile is
    host work: ~100 s a point one after another on a cold machine), each then timed alone on
    the card when `time` asks, while the others wait idle."""

    def __init__(self, folder: str, points: list[tuple[int, int]]) -> None:
        self.procs = {}
        for pt in points:
            err = tempfile.TemporaryFile("w+")     # a pipe could fill and stall the compile
            self.procs[pt] = (subprocess.Popen(
                [sys.executable, "-c", GPTFAST, folder, str(pt[0]), str(pt[1]), "32", "288"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True), err)
        self.t0 = time.perf_counter()

    def wait_ready(self) -> None:
        """Returns when every process has compiled and warmed up (or died: `time` says why)."""
        for proc, _ in self.procs.values():
            proc.stdout.readline()
        print(f"# gpt-fast: {len(self.procs)} points compiled at once in "
              f"{time.perf_counter() - self.t0:.0f} s", flush=True)

    def time(self, pt: tuple[int, int]) -> dict:
        proc, err = self.procs.pop(pt)
        try:
            out, _ = proc.communicate("go\n", timeout=120)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            proc.kill()
            out, _ = proc.communicate()
        err.seek(0)
        line = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(line[-1]) if line else {"error": err.read().strip().splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gptfast", default="", help="gpt-fast's folder (skipped when empty)")
    ap.add_argument("--points", default="1x128,8x128,1x2048,8x2048")
    ap.add_argument("--gptfast-points", default="1x128,8x128,1x2048,8x2048")
    ap.add_argument("--kv", default="static,paged")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--long", type=int, default=2000, help="tokens of the flat-ITL run (0: none)")
    ap.add_argument("--mixed", type=int, default=32, help="batch of the mixed-length KV run")
    ap.add_argument("--mode", default=KERNELS,
                    help="compile=full's modes, comma-separated: kernels (fused.py) and/or an "
                         "inductor mode (max-autotune-no-cudagraphs); rows of the later ones "
                         "are labelled with it")
    ap.add_argument("--profile", action="store_true", help="kernel table of a 1x128 step")
    ap.add_argument("--prefill", default="",
                    help="prompt lengths whose TTFT is timed with the prefill eager and compiled "
                         "(e.g. 128,2048; '': none)")
    ap.add_argument("--hf-points", default="1x128,8x128",
                    help="points of backend=hf --preset max ('': none; each compiles ~1 min)")
    args = ap.parse_args()
    points = [tuple(int(v) for v in pt.split("x")) for pt in args.points.split(",")]
    peer_points = [tuple(int(v) for v in pt.split("x"))
                   for pt in filter(None, args.gptfast_points.split(","))] if args.gptfast else []
    peers = GptFast(args.gptfast, peer_points) if peer_points else None
    if peers:
        peers.wait_ready()
    bw = read_bandwidth()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | read {bw:.0f} GB/s",
          flush=True)
    loaded = models.load(specs.resolve("synthetic:llama-2-7b"), "cuda", "bf16", "sdpa",
                         lambda *a: None)
    batches = sorted({b for b, _ in points})
    rows = []
    modes = args.mode.split(",")
    for mode, kv in [(m, k) for m in modes for k in args.kv.split(",")]:
        events: list = []
        t0 = time.perf_counter()
        native = NativeBackend(loaded, {"kv": kv, "compile": "full", "attention": "sdpa"},
                               events.append, max_batch=max(batches), context=4096,
                               graph_batches=batches, compile_mode=mode)
        built = "; ".join(f"{e.kind}: {e.detail} {getattr(e, 'duration_ms', None) or ''}"
                          for e in events)
        label = kv if mode == modes[0] else f"{kv} {mode}"
        print(f"# kv={label}: built in {time.perf_counter() - t0:.1f} s ({built})", flush=True)
        weights = native.model.weight_bytes()
        token_bytes = native.cache.token_bytes
        for batch, prompt in points:
            timed_run(native, loaded, batch, prompt, 8)            # warm: allocator, cuBLAS
            g = gaps_ms(timed_run(native, loaded, batch, prompt, args.tokens + 1))
            kv_read = batch * (prompt + args.tokens / 2) * token_bytes
            floor = (weights + kv_read) / bw / 1e6
            tpot = statistics.fmean(g)
            rows.append(dict(kv=label, batch=batch, prompt=prompt, tpot=tpot, p50=p(g, .5),
                             p99=p(g, .99), floor=floor))
            print(f"  kv={label} bs={batch} prompt={prompt}: TPOT {tpot:.3f} ms, floor "
                  f"{floor:.3f} ms ({tpot / floor:.2f}x)", flush=True)
        if args.long and kv == "static" and mode == modes[0]:
            g = gaps_ms(timed_run(native, loaded, 1, 128, args.long))
            print(f"# long run, kv={kv}, 1x128 + {args.long} tokens: p50 {p(g, .5):.3f} ms, "
                  f"p99 {p(g, .99):.3f} ms, p99/p50 {p(g, .99) / p(g, .5):.2f}, max "
                  f"{max(g):.3f} ms", flush=True)
        if args.profile and kv == "static":
            step_profile(native, loaded, label)
        if args.prefill and kv == "static" and mode == modes[0]:
            prefill_compare(native, loaded, [int(v) for v in args.prefill.split(",")])
        native.close()
        del native
    # gpt-fast before --preset max: its processes leave the card before hf builds its own
    peer = {}
    for batch, prompt in peer_points:
        peer[(batch, prompt)] = peers.time((batch, prompt))
        ours = [r["tpot"] for r in rows
                if (r["kv"], r["batch"], r["prompt"]) == ("static", batch, prompt)]
        ms = peer[(batch, prompt)].get("ms")
        ratio = f", native static / gpt-fast {ours[0] / ms:.2f}" if ours and ms else ""
        print(f"# gpt-fast {batch}x{prompt}: {peer[(batch, prompt)]}{ratio}", flush=True)
    hf_points = [tuple(int(v) for v in pt.split("x"))
                 for pt in filter(None, args.hf_points.split(","))]
    if hf_points:
        rows += preset_max(loaded, hf_points, args.tokens, bw, weights, token_bytes)
    table(rows, peer)
    if args.mixed:          # after gpt-fast's processes have left the card's memory
        mixed_kv(loaded, args.mixed)


def preset_max(loaded: models.Loaded, points: list[tuple[int, int]], tokens: int, bw: float,
               weights: int, token_bytes: int) -> list[dict]:
    """backend=hf with --preset max (static cache, the forward compiled reduce-overhead in CUDA
    graphs) at the same points and floor: the fastest transformers path beside native."""
    opts = parse_opts([], "max")
    events: list = []
    hf = HfBackend(loaded, opts, events.append)
    rows = []
    for batch, prompt in points:
        t0 = time.perf_counter()
        hf.warm(batch, prompt, tokens + 1)
        timed_run(hf, loaded, batch, prompt, tokens + 1)     # the prefill graph, unmeasured
        built = time.perf_counter() - t0
        g = gaps_ms(timed_run(hf, loaded, batch, prompt, tokens + 1))
        floor = (weights + batch * (prompt + tokens / 2) * token_bytes) / bw / 1e6
        tpot = statistics.fmean(g)
        rows.append(dict(kv="hf --preset max", batch=batch, prompt=prompt, tpot=tpot,
                         p50=p(g, .5), p99=p(g, .99), floor=floor))
        print(f"  hf --preset max ({opts}) bs={batch} prompt={prompt}: built in {built:.1f} s, "
              f"TPOT {tpot:.3f} ms, floor {floor:.3f} ms ({tpot / floor:.2f}x)", flush=True)
    del hf
    torch.cuda.empty_cache()
    return rows


def prefill_compare(native: NativeBackend, loaded: models.Loaded, prompts: list[int],
                    repeat: int = 5) -> None:
    """TTFT of one request with the prefill's pieces eager and compiled (fullgraph, dynamic
    prompt length, inductor's default mode: one compile for every length): #16's "prefill
    compiled or not". Median of `repeat` after a warm-up per length (the compile, once)."""
    from llmtop.engine.native.model import EAGER, Pieces, attn_in, attn_out_mlp, head

    kw = dict(fullgraph=True, dynamic=True)
    compiled = Pieces(torch.compile(attn_in, **kw), torch.compile(attn_out_mlp, **kw),
                      torch.compile(head, **kw))
    eager = native.model.prefill
    cuda = loaded.device != "cpu" and torch.cuda.is_available()

    def ttft(prompt: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        return (timed_run(native, loaded, 1, prompt, 1)[0] - t0) / 1e6

    got = {}
    for name, fns in (("eager", EAGER), ("compiled", compiled)):
        native.model.prefill = functools.partial(eager, fns=fns)
        t = time.perf_counter()
        for prompt in prompts:
            ttft(prompt)
        warm = time.perf_counter() - t
        got[name] = [statistics.median(ttft(pr) for _ in range(repeat)) for pr in prompts]
        print(f"# prefill {name}: TTFT " + ", ".join(
            f"{pr} tokens {ms:.2f} ms" for pr, ms in zip(prompts, got[name]))
            + f" (first of each length: {warm:.1f} s)", flush=True)
    del native.model.prefill            # back to the method
    print("# prefill compiled / eager: " + ", ".join(
        f"{pr} tokens {c / e:.2f}" for pr, e, c in zip(prompts, got["eager"], got["compiled"])))


def chain_times(kernels: list[tuple[float, float, str]]) -> dict[str, list[float]]:
    """Per kernel name: [launches, device us, chain us], and "(idle)": [0, 0, us], from
    (start, end, name) intervals. A kernel's chain time is how far it moves the last kernel end
    forward: end - max(start, previous ends). Launched serially it is the kernel's duration;
    under dependent launch a kernel starts while the one before runs, and only its part past
    that one's end counts. The chain times and the idle gaps add up to the device span."""
    out: dict[str, list[float]] = {"(idle)": [0, 0.0, 0.0]}
    kernels = sorted(kernels)
    last = kernels[0][0] if kernels else 0.0
    for start, end, name in kernels:
        row = out.setdefault(name, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += end - start
        out["(idle)"][2] += max(0.0, start - last)
        row[2] += max(0.0, end - max(start, last))
        last = max(last, end)
    return out


def kernel_chain(run: Callable[[], object]) -> dict[str, list[float]]:
    """chain_times of the CUDA kernels (and copies) run() launches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
    return chain_times([(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                        if e.device_type.name == "CUDA"])


def step_profile(native: NativeBackend, loaded: models.Loaded, label: str,
                 steps: int = 32) -> None:
    """Where a batch-1 decode step's time goes: per kernel, its launches, device time and chain
    time per step (kernel_chain over `steps` decode steps less a prefill-only run), against
    the wall TPOT."""
    timed_run(native, loaded, 1, 128, 8)
    prefill = kernel_chain(lambda: timed_run(native, loaded, 1, 128, 1))
    stamps: list[int] = []
    run = kernel_chain(lambda: stamps.extend(timed_run(native, loaded, 1, 128, steps + 1)))
    wall = statistics.fmean(gaps_ms(stamps))
    zero = [0, 0.0, 0.0]
    per = {k: [(v - w) / steps for v, w in zip(row, prefill.get(k, zero))]
           for k, row in run.items() if k != "(idle)"}
    per = {k: v for k, v in per.items() if v[0] > 0}
    chain = sum(v[2] for v in per.values()) / 1e3
    # the profiled run's idle gaps include the profiler's own start: wall - chain is the step's
    print(f"\n# step profile, kv={label} 1x128, decode only: wall {wall:.3f} ms/step, kernels' "
          f"chain {chain:.3f} ms/step, idle (wall - chain) {wall - chain:.3f} ms/step, "
          f"{sum(v[0] for v in per.values()):.0f} kernels/step")
    print("| kernel | calls/step | device us/call | chain us/call | chain ms/step |")
    print("|---|---|---|---|---|")
    for k, (n, dev, ch) in sorted(per.items(), key=lambda kv: -kv[1][2])[:16]:
        print(f"| {k[:60]} | {n:.0f} | {dev / n:.1f} | {ch / n:.1f} | {ch / 1e3:.3f} |")


def mixed_kv(loaded: models.Loaded, batch: int) -> None:
    """KV bytes static and paged reserve for `batch` requests of prompts 64 .. 2048."""
    lens = [64 + (2048 - 64) * r // (batch - 1) for r in range(batch)]
    print(f"\n| kv (batch {batch}, prompts 64..2048, 32 new) | pool GB | reserved GB | used GB |")
    print("|---|---|---|---|")
    for kv in ("static", "paged"):
        native = NativeBackend(loaded, {"kv": kv, "compile": "off", "attention": "sdpa"},
                               lambda e: None, max_batch=batch, context=4096,
                               pool_tokens=sum(lens) + batch * 64)
        timed_run(native, loaded, batch, lens, 32)
        u = native.run_info()
        print(f"| {kv} | {u['kv_pool_bytes'] / 1e9:.2f} | {u['kv_reserved_bytes'] / 1e9:.2f} | "
              f"{u['kv_used_bytes'] / 1e9:.2f} |", flush=True)
        native.close()


def table(rows: list[dict], peer: dict) -> None:
    print("\n| kv | batch | prompt | TPOT ms | ITL p50 / p99 ms | floor ms | x floor | "
          "gpt-fast ms | native / gpt-fast |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = peer.get((r["batch"], r["prompt"]), {}).get("ms")
        ratio = f"{r['tpot'] / g:.2f}" if g else "n/a"
        print(f"| {r['kv']} | {r['batch']} | {r['prompt']} | {r['tpot']:.3f} | {r['p50']:.3f} / "
              f"{r['p99']:.3f} | {r['floor']:.3f} | {r['tpot'] / r['floor']:.2f} | "
              f"{f'{g:.3f}' if g else 'n/a'} | {ratio} |")


if __name__ == "__main__":
    main()

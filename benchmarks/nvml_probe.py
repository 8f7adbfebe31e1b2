"""Checks the profilers against a real NVIDIA GPU: run on a CUDA machine, not in CI.

    python benchmarks/nvml_probe.py [--device 0] [--load-s 10] [--engine synthetic:llama-2-7b]
                                    [--json OUT.json]

What it does, on one GPU, with the Sampler at 10 Hz watching this process:
  1. idle for a few seconds (baseline utilization, power, clocks);
  2. allocates a known number of bytes (memory must grow by at least that much);
  3. runs a bf16 matmul loop, stamping each "token" (a batch of matmuls, synchronised) with
     perf_counter_ns like the engine does, and matches every token to the samples around it;
  4. times backend.sample() alone, and the loop with and without the sampler running;
  5. with --engine MODEL: starts the real llmtop engine on that GPU and watches *its* process:
     GPU memory must grow by at least the model's weight bytes, utilization and power must rise
     while it generates, and every token (stamped in the engine process) must map to samples.
Prints each check as PASS / FAIL and exits 1 if any failed; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from llmtop.profilers.gpu import detect_backend
from llmtop.profilers.nvml import NvmlBackend
from llmtop.profilers.report import info_text, top_header, top_lines
from llmtop.profilers.sampler import Sampler

GIB = 1024**3


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def matmul_tokens(device: torch.device, seconds: float, size: int = 8192,
                  per_token: int = 8) -> tuple[list[tuple[int, int]], int]:
    """(start, end) perf_counter_ns of each synchronised batch of matmuls, and the count."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    tokens = []
    deadline = time.perf_counter() + seconds
    start = time.perf_counter_ns()
    while time.perf_counter() < deadline:
        for _ in range(per_token):
            a = (a @ b) * 1e-4
        torch.cuda.synchronize(device)
        end = time.perf_counter_ns()
        tokens.append((start, end))
        start = end
    return tokens, len(tokens) * per_token


def engine_checks(backend: NvmlBackend, index: int, args: argparse.Namespace, check, results: dict
                  ) -> None:
    """The engine process on the GPU, as the dashboard sees it: memory, load, token alignment."""
    from llmtop.engine.client import EngineClient
    from llmtop.engine.protocol import Configure, Error, Generate, GuardResult, ModelInfo, RunDone, Token

    def until(client: EngineClient, types: tuple, seen: list) -> object:
        while True:
            ev = client.get(timeout=900)
            seen.append(ev)
            if isinstance(ev, types):
                return ev

    client = EngineClient()
    client.start()
    sampler = Sampler(backend, hz=10, pid=client.pid).start()
    try:
        time.sleep(2.0)
        before = sampler.gpu_history(index)[-1]
        seen: list = []
        client.send(Configure(args.engine, f"cuda:{index}", "bf16", {"attention": "sdpa"}))
        ev = until(client, (GuardResult, Error), seen)
        if isinstance(ev, Error):
            check("engine configures", False, ev.message)
            return
        info = next(e for e in seen if isinstance(e, ModelInfo))
        time.sleep(1.0)
        loaded = sampler.gpu_history(index)[-1]
        grew = loaded.mem_used - before.mem_used
        own = loaded.process_mem
        results["engine"] = {"model": info.name, "weight_bytes": info.weight_bytes,
                             "mem_grew": grew, "engine_process_mem": own}
        check("engine: memory grows by the weight bytes", grew >= info.weight_bytes,
              f"+{grew / GIB:.2f} GiB used for {info.weight_bytes / GIB:.2f} GiB of weights "
              f"({info.name}); the engine process holds "
              f"{f'{own / GIB:.2f} GiB' if own is not None else 'n/a (pid namespace?)'}")
        idle = sampler.gpu_history(index)[-5:]
        run: list = []
        start = time.perf_counter_ns()
        client.send(Generate(run_id=1, prompt_len=512, batch=8, max_new_tokens=256,
                             ignore_eos=True))
        done = until(client, (RunDone, Error), run)
        if isinstance(done, Error):
            check("engine generates", False, done.message)
            return
        stamps = [e.t_ns for e in run if isinstance(e, Token)]
        busy = [s for s in sampler.gpu_history(index) if s.t_ns >= start + 500_000_000]
        for name, field in (("utilization", "util_pct"), ("power", "power_w")):
            a, b = mean([getattr(s, field) for s in idle]), mean([getattr(s, field) for s in busy])
            results["engine"][f"idle_{field}"], results["engine"][f"gen_{field}"] = a, b
            check(f"engine: {name} rises while it generates", a is not None and b is not None
                  and b > a, f"idle {a} -> generating {b} ({len(busy)} samples)")
        spans = list(zip([start] + stamps[:-1], stamps))
        per_token = [sampler.samples_between(t0, t1, index=index) for t0, t1 in spans]
        matched = [s for s in per_token if s]
        # a token of ~25 ms sees a 10 Hz sample only one time in four: the check is that the
        # samples fall inside the run's token spans, on the engine's clock
        results["engine"].update(tokens=len(stamps), tokens_with_sample=len(matched),
                                 tpot_ms=done.record["metrics"]["tpot_ms"])
        inside = [s.t_ns for s in busy if start <= s.t_ns <= stamps[-1]]
        check("engine: samples align with the engine's token stamps",
              len(matched) >= 0.9 * len(inside) and inside,
              f"{len(stamps)} tokens at {done.record['metrics']['tpot_ms']:.1f} ms TPOT, "
              f"{len(inside)} samples inside the run, {len(matched)} tokens hold one; "
              f"power per sampled token {mean([x.power_w for s in matched for x in s])} W, "
              f"SM clock {mean([x.sm_clock_mhz for s in matched for x in s])} MHz")
        cost = sampler.cost()
        results["engine"]["sampler_cost"] = vars(cost)
        check("engine: sampler cost per poll", cost.mean_ms < 2.0,
              f"CPU mean {cost.mean_ms:.3f} ms, max {cost.max_ms:.3f} ms over {cost.polls} "
              f"polls; wall {cost.wall_mean_ms:.3f} ms")
    finally:
        sampler.stop()
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--idle-s", type=float, default=4.0)
    parser.add_argument("--load-s", type=float, default=10.0)
    parser.add_argument("--alloc-gib", type=float, default=8.0)
    parser.add_argument("--engine", default="", metavar="MODEL",
                        help="also watch the llmtop engine generating with MODEL on this GPU")
    parser.add_argument("--json", help="write every measured number here")
    args = parser.parse_args()

    backend = detect_backend()
    print(info_text(backend, pid=os.getpid()))
    if not isinstance(backend, NvmlBackend):
        print("FAIL: NVML backend did not load")
        return 1
    device = torch.device("cuda", args.device)
    torch.cuda.init()
    index = args.device  # NVML and CUDA agree when CUDA_VISIBLE_DEVICES is unset
    results: dict = {"device": backend.devices()[index].name, "checks": {}}

    def check(name: str, ok: bool, detail: str) -> None:
        results["checks"][name] = {"ok": bool(ok), "detail": detail}
        print(f"{'PASS' if ok else 'FAIL'}: {name}: {detail}")

    polls = 300
    t = time.perf_counter_ns()
    for _ in range(polls):
        backend.sample(os.getpid())
    results["bare_poll_ms"] = (time.perf_counter_ns() - t) / polls / 1e6
    check("bare poll cost", results["bare_poll_ms"] < 2.0,
          f"{results['bare_poll_ms']:.3f} ms per backend.sample() ({len(backend.devices())} GPUs)")

    sampler = Sampler(backend, hz=10, pid=os.getpid()).start()
    time.sleep(args.idle_s)
    idle = sampler.gpu_history(index)
    mem_before = idle[-1].mem_used

    ballast = torch.empty(int(args.alloc_gib * GIB), dtype=torch.uint8, device=device)
    ballast.fill_(1)
    torch.cuda.synchronize(device)
    time.sleep(0.5)
    after_alloc = sampler.gpu_history(index)[-1]
    grew = after_alloc.mem_used - mem_before
    own = after_alloc.process_mem
    check("memory grows by the allocation", grew >= ballast.numel(),
          f"+{grew / GIB:.2f} GiB used for a {ballast.numel() / GIB:.2f} GiB tensor; this "
          f"process holds {f'{own / GIB:.2f} GiB' if own is not None else 'n/a (pid namespace?)'}")

    load_start = time.perf_counter_ns()
    tokens, matmuls = matmul_tokens(device, args.load_s)
    load = [s for s in sampler.gpu_history(index) if s.t_ns >= load_start + 1_000_000_000]
    sampler_cost = sampler.cost()
    sampler.stop()

    for name, field in (("utilization", "util_pct"), ("power", "power_w"),
                        ("SM clock", "sm_clock_mhz"), ("energy", "energy_j")):
        a = mean([getattr(s, field) for s in idle])
        b = mean([getattr(s, field) for s in load])
        results[f"idle_{field}"], results[f"load_{field}"] = a, b
        if field == "energy_j":
            ok = load[-1].energy_j is not None and load[-1].energy_j > idle[0].energy_j
            check("energy counter advances", ok, f"{idle[0].energy_j} J -> {load[-1].energy_j} J")
        else:
            check(f"{name} rises under load", a is not None and b is not None and b > a,
                  f"idle {a} -> load {b}")

    per_token = [sampler.samples_between(t0, t1, index=index) for t0, t1 in tokens]
    covered = sum(1 for s in per_token if s) / len(per_token)
    token_ms = statistics.median((t1 - t0) / 1e6 for t0, t1 in tokens)
    token_power = [mean([s.power_w for s in samples]) for samples in per_token if samples]
    results.update(tokens=len(tokens), token_ms_median=token_ms, token_coverage=covered,
                   token_power_mean=mean(token_power))
    check("every token maps to samples", covered > 0.99,
          f"{len(tokens)} tokens of {token_ms:.1f} ms, {covered:.1%} matched; "
          f"mean power during tokens {mean(token_power)} W")

    results["sampler_cost"] = vars(sampler_cost)
    check("sampler cost per poll", sampler_cost.mean_ms < 2.0,
          f"CPU mean {sampler_cost.mean_ms:.3f} ms, max {sampler_cost.max_ms:.3f} ms over "
          f"{sampler_cost.polls} polls (GPU + host); wall {sampler_cost.wall_mean_ms:.3f} ms "
          f"(includes waiting for this GPU loop's thread to release the GIL)")

    _, bare = matmul_tokens(device, 3.0)
    watched_sampler = Sampler(backend, hz=10, pid=os.getpid()).start()
    _, watched = matmul_tokens(device, 3.0)
    watched_sampler.stop()
    overhead = 1 - watched / bare
    results.update(matmuls_bare_3s=bare, matmuls_watched_3s=watched, overhead=overhead)
    check("watching does not slow the GPU", overhead < 0.02,
          f"{bare} matmuls alone vs {watched} with the sampler ({overhead:+.2%})")

    del ballast
    torch.cuda.empty_cache()
    if args.engine:
        engine_checks(backend, index, args, check, results)

    unsupported = [f for f, v in vars(load[-1]).items() if v is None]
    results["fields_none_under_load"] = unsupported
    print(f"fields n/a on this GPU: {', '.join(unsupported) or 'none'}")
    print(top_header())
    print(top_lines(load[-3:], t0_ns=load_start))
    print(f"read errors kept by the backend: {backend.errors or 'none'}")
    backend.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if all(c["ok"] for c in results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

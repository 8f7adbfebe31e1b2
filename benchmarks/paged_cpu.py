#!/usr/bin/env python
"""TPOT of kv=paged (transformers' continuous batching) against kv=dynamic, on the CPU.

    python benchmarks/paged_cpu.py                       # embedded model, bf16, batch 1 and 4
    python benchmarks/paged_cpu.py --dtype fp32 --threads 1 --max-new-tokens 32 --repeat 5

Both paths get the same prompt repeated `batch` times (as the engine does), --max-new-tokens
tokens with EOS ignored, greedy. Runs interleave (dynamic, dynamic/thread, paged, ...) so that
drift on a shared machine hits all alike; each figure is the median over --repeat runs after
one warm-up run of each. TPOT = (last stamp - first stamp) / (n - 1), the engine's definition.
"receipt lag": median of Step.t_ns minus the batching thread's own stamp of that index's last
token (host_t_ns). "tokens": whether paged and dynamic greedy tokens agree (fp32 must; bf16
may diverge, since the paged path packs the batch into one sequence and rounds differently).

Continuous batching runs the model in its own thread. On a loaded 2-core machine a 2-thread
OpenMP team in the *main* thread can be pathologically slow for small GEMMs (measured here: a
4 x 576 x 1536 linear took 24 ms in the main thread, 0.35 ms in a worker thread, 0.22 ms with
one thread), so "dynamic" is also measured in a worker thread ("dynamic/thread"): the
paged/dynamic ratio is only about paging when both run under the same threading.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
from transformers import DynamicCache

from llmtop.engine import generate, models, paged
from llmtop.engine import spec as specs

PROMPT = "The largest continent is"


def tpot_ms(steps: list) -> float:
    return (steps[-1].t_ns - steps[0].t_ns) / 1e6 / (len(steps) - 1)


def same(a: list, b: list) -> str:
    """'identical', or where greedy tokens first differ (bf16 rounds differently when the
    requests are packed into one sequence instead of a [batch, len] tensor)."""
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"diverge at {k}"
    return "identical" if len(a) == len(b) else "lengths differ"


def run_dynamic(model, inputs, n: int) -> list:
    return list(generate.run(model, inputs, n, generate.Sampling(),
                             DynamicCache(config=model.config), set(), True, lambda: False))


def run_dynamic_thread(model, inputs, n: int) -> list:
    out: list = []
    t = threading.Thread(target=lambda: out.extend(run_dynamic(model, inputs, n)))
    t.start()
    t.join()
    return out


def run_paged(model, inputs, n: int) -> list:
    return list(paged.run_paged(model, inputs, n, generate.Sampling(), set(), True,
                                lambda: False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=list(models.DTYPES))
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = models.load(specs.resolve("embedded"), "cpu", a.dtype, "sdpa",
                         lambda detail, fraction: None)
    model, tok = loaded.model, loaded.tokenizer
    try:
        import os
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    print(f"embedded SmolLM2-135M, {a.dtype}, cpu, torch threads {torch.get_num_threads()}, "
          f"{a.max_new_tokens} new tokens, median of {a.repeat}; load average {load}")
    paths = {"dynamic": run_dynamic, "dynamic/thread": run_dynamic_thread, "paged": run_paged}
    print(f"{'batch':>5}  " + "  ".join(f"{name:>15}" for name in paths)
          + f"  {'paged/dynamic':>13}  {'paged/dyn.thread':>16}  {'receipt lag':>11}  tokens")
    for batch in (int(b) for b in a.batch.split(",")):
        enc = tok([PROMPT] * batch, return_tensors="pt", padding=True)
        inputs = generate.Inputs(enc["input_ids"], enc["attention_mask"], [PROMPT] * batch,
                                 int(enc["input_ids"].shape[1]))
        times: dict[str, list[float]] = {name: [] for name in paths}
        lags: list[float] = []
        ids: dict[str, list] = {}
        for rep in range(a.repeat + 1):
            for name, fn in paths.items():
                steps = fn(model, inputs, a.max_new_tokens)
                ids[name] = [s.ids for s in steps]
                if rep:  # the first round is warm-up
                    times[name].append(tpot_ms(steps))
                    if name == "paged":
                        lags += [(s.t_ns - max(s.host_t_ns)) / 1e6 for s in steps]
        med = {name: statistics.median(v) for name, v in times.items()}
        print(f"{batch:>5}  " + "  ".join(f"{med[n]:>12.1f} ms" for n in paths)
              + f"  {med['paged'] / med['dynamic']:>12.2f}x"
              + f"  {med['paged'] / med['dynamic/thread']:>15.2f}x"
              + f"  {statistics.median(lags):>8.2f} ms  {same(ids['dynamic'], ids['paged'])}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()

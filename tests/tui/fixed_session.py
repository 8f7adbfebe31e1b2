"""A fixed, realistic stream of engine events and telemetry, for tests that need no engine.

Stamps are invented but the records are computed from them with the same functions the engine
uses (llmtop.engine.metrics), so every figure on screen is consistent with the tokens shown.
"""

from __future__ import annotations

from dataclasses import asdict

from llmtop.engine import metrics as m
from llmtop.engine import catalogue, threads
from llmtop.profilers.gpu import GpuSample, GpuStatic
from llmtop.profilers.host import HostSample
from llmtop.profilers.numa import NumaNode, NumaStatus
from llmtop.profilers.sampler import Tick
from llmtop.profilers.topology import Link, TopologyMatrix
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, ModelInfo, RunDone, RunStarted,
                             Status, Token)

MODEL = ModelInfo(name="SmolLM2-135M-Instruct", params=134515008, weight_bytes=269030016, layers=30,
                  heads=9, kv_heads=3, hidden=576, vocab=49152, dtype="bf16", device="cpu",
                  synthetic=False, source="/cache/smollm2-135m-instruct-bf16",
                  kv_bytes_per_token=2 * 30 * 3 * 64 * 2)

CPU_OPTIONS = {
    "attention": {"eager": (True, ""), "sdpa": (True, ""),
                  "flash": (True, "on CPU the SDPA 'flash' backend is a CPU kernel"),
                  "mem_efficient": (False, "needs a CUDA or ROCm GPU (the CPU has no such SDPA kernel)"),
                  "cudnn": (False, "needs a CUDA or ROCm GPU (the CPU has no such SDPA kernel)"),
                  "flex": (True, ""),
                  "flash_attention_2": (False, "flash-attn not installed (pip install flash-attn)")},
    "kv": {"dynamic": (True, ""), "static": (True, ""),
           "paged": (False, "paged KV (continuous batching) is not wired into this engine yet")},
    "compile": {"off": (True, ""), "layers": (True, "compiles on CPU too, slowly (minutes)"),
                "full": (True, "no CUDA graphs on CPU: compile only, minutes per prompt length")},
    "gemm": {"default": (True, ""), "tunableop": (False, "TunableOp needs a CUDA or ROCm GPU")},
    "dtype": {"bf16": (True, ""), "fp16": (True, "fp16 matmuls are slow on most CPUs"), "fp32": (True, "")},
    "backend": {"hf": (True, ""), "vllm": (False, "vLLM not installed (pip install vllm)")},
}
# a 2-core machine: beside the dashboard the engine runs on one thread (engine/threads.py)
THREADS = threads.plan(None, default=2, usable=2, ui_attached=True)
DEVICE = DeviceInfo("cpu", f"cpu x86_64 x{THREADS.threads}", 33.4, 0.41,
                    {a: {o: {"ok": ok, "reason": r} for o, (ok, r) in opts.items()}
                     for a, opts in CPU_OPTIONS.items()},
                    threads=THREADS.threads, cpus=THREADS.usable, threads_note=THREADS.reason)

TEXT_1 = [" Antarctica", ",", " but", " it", "'s", " actually", " a", " bit", " of", " a", " double",
          "-", "edged", " sword", ".", " On"]
TEXT_2 = [" red", ",", " yellow", " and", " blue", ".", " These", " are", " the", " colors", " that",
          " cannot", " be", " made", " by", " mixing"]
# per-token latencies in ms: the first is TTFT; a slow step and a spike stand out
LAT_1 = [138.7, 41.2, 40.8, 40.5, 41.9, 40.1, 55.3, 40.6, 40.2, 97.4, 40.9, 40.3, 41.1, 40.7, 40.4, 40.6]
LAT_2 = [121.5, 44.0, 43.8, 44.3, 43.9, 44.1, 43.7, 61.0, 44.2, 44.0, 43.6, 44.5, 43.9, 44.1, 44.0, 43.8]
LAT_3 = [119.9, 39.5, 39.8, 40.1, 39.6]


def opts(**changes: str) -> dict[str, str]:
    return {**catalogue.DEFAULTS, **changes}


def config(o: dict[str, str]) -> Configure:
    return Configure("embedded", "cpu", "bf16", o, 1)


def _stamps(start_ns: int, lats: list[float]) -> list[int]:
    out, t = [], start_ns
    for lat in lats:
        t += int(lat * 1e6)
        out.append(t)
    return out


def run_events(run_id: int, prompt: str, texts: list[str], lats: list[float], start_ns: int,
               o: dict[str, str], done: bool = True, guard: dict | None = None) -> list:
    stamps = _stamps(start_ns, lats)
    events: list = [RunStarted(run_id, [prompt], 5, 1, 16, start_ns), Status("generating", f"run {run_id}")]
    ids = [sum(map(ord, t)) for t in texts]   # the same text gives the same ids
    for i, (text, t) in enumerate(zip(texts, stamps)):
        events.append(Token(run_id, i, [ids[i]], [text], t))
    if done:
        rm = m.run_metrics(start_ns, stamps, 1, 5)
        roof = m.roofline(rm, MODEL.weight_bytes, MODEL.params, 23040, DEVICE.mem_bw_gb_s,
                          DEVICE.peak_tflops)
        record = {"schema": "llmtop.run/1", "model": asdict(MODEL), "config": asdict(config(o)),
                  "tokens": [[{"index": i, "id": ids[i], "text": x, "t_ns": t}
                              for i, (x, t) in enumerate(zip(texts, stamps))]],
                  "metrics": rm.to_dict(), "roofline": asdict(roof),
                  "guard": guard or {"status": "not_checked"}, "stopped": "",
                  "ceilings": {"mem_bw_gb_s": DEVICE.mem_bw_gb_s, "peak_tflops": DEVICE.peak_tflops}}
        events += [RunDone(run_id, record), Status("ready", "")]
    return events


def engine_events() -> list:
    """Two finished runs (defaults, then attention=eager), then a third streaming."""
    base = opts()
    eager = opts(attention="eager")
    t0 = 10_000_000_000
    events: list = [Status("ready", "waiting for a configuration"), MODEL, DEVICE,
                    ConfigApplied(config(base), "loaded", 2.41), Status("ready", "")]
    events += run_events(1, "The largest continent is", TEXT_1, LAT_1, t0, base)
    events += [ConfigApplied(config(eager), "in place", 0.001), Status("ready", "")]
    events += run_events(2, "The largest continent is", TEXT_1, LAT_2, t0 + 2_000_000_000, eager)
    events += [EngineEvent("recompile", "Recompiling function forward", t0 + 4_000_000_000 + 200_000_000)]
    events += run_events(3, "The three primary colors are", TEXT_2[:5], LAT_3, t0 + 4_000_000_000,
                         eager, done=False)
    return events


def telemetry(gpus: int = 0) -> dict:
    """Fixed host, NUMA and (optionally) GPU telemetry."""
    host = [HostSample(t_ns=1_000_000 * i, cpu_pct=p, per_core_pct=[p + 3, p - 3],
                       mem_total=25_276_510_208, mem_used=3_330_540_544, mem_available=21_945_969_664,
                       load_avg=(1.92, 1.40, 0.88), pid=4242, proc_cpu_pct=181.0, proc_rss=702_000_000)
            for i, p in enumerate([52.0, 88.0, 91.0, 95.0, 97.0])]
    statics = [GpuStatic(index=i, name="NVIDIA H100 80GB HBM3", vendor="nvidia", uuid=f"GPU-{i}",
                         pci_bus_id=f"0000:{0x17 + i:02x}:00.0", memory_total=85_520_809_984,
                         power_cap_w=700.0, sm_clock_max_mhz=1980, mem_clock_max_mhz=2619)
               for i in range(gpus)]
    ticks = []
    for k in range(5):
        samples = [GpuSample(t_ns=1_000_000 * k, index=i, util_pct=20.0 + 15 * k, mem_util_pct=30.0,
                             mem_used=15_000_000_000 + 10_000_000 * k, mem_total=85_520_809_984,
                             power_w=150.0 + 60 * k, power_cap_w=700.0, temp_c=41.0 + k,
                             temp_hotspot_c=None, temp_mem_c=45.0, sm_clock_mhz=1980,
                             mem_clock_mhz=2619, process_mem=14_200_000_000)
                   for i in range(gpus)]
        ticks.append(Tick(t_ns=1_000_000 * k, gpus=samples, host=host[k]))
    numa = NumaStatus(balancing=1, warning=("NUMA balancing is on (kernel.numa_balancing=1: normal): "
                                            "page migrations stall the GPU; as root: "
                                            "echo 0 > /proc/sys/kernel/numa_balancing"),
                      nodes=[NumaNode(0, [0, 1], 13_113_708_544, 8_742_752_256)],
                      gpu_nodes={i: 0 for i in range(gpus)}, pid=4242, affinity=[0, 1],
                      local={i: True for i in range(gpus)})
    topology = None
    if gpus > 1:
        links = [[Link("self", "X") if a == b else Link("nvlink", "NV18", 450.0, 18)
                  for b in range(gpus)] for a in range(gpus)]
        topology = TopologyMatrix("nvml", list(range(gpus)), links)
    return {"backend": "nvml" if gpus else "none", "devices": statics,
            "reasons": [] if gpus else ["NVML: NVML Shared Library Not Found (NVMLError_LibraryNotFound)",
                                        "amdsmi: not installed"],
            "ticks": ticks, "numa": numa, "ui_cpu_pct": 3.2, "topology": topology}


def feed(app, gpus: int = 0) -> None:
    for ev in engine_events():
        app.handle_event(ev)
    app.feed_telemetry(**telemetry(gpus))

"""An A/B of backend=native's MLP on a GPU: the compiled o + MLP piece as it is (inductor fuses
SiLU(gate) * up into the down projection's GEMV, each program recomputing its slice of the
activation), against the same piece cut in two so the activation is stored once and the down
projection is a plain GEMV. Why: the fused down GEMV took 25.6 us in one build and 38.5 us in
another on the H200 (coordinate descent's pick), the largest loss in the step profile.

Both builds are fresh compiles in one process, synthetic Llama-2-7B bf16, batch 1, prompt 128;
prints TPOT, x-floor and the MLP kernels of a profiled step for each.

    python3 benchmarks/native_mlp_split.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

import native_decode as nd
from llmtop.engine import models
from llmtop.engine import spec as specs
from llmtop.engine.backends.native import NativeBackend
from llmtop.engine.native import graphs
from llmtop.engine.native.model import Pieces, rms_norm


def out_and_act(x, o, wo, norm, w13, eps):
    x = x + F.linear(o.reshape(x.shape[0], x.shape[1], -1), wo)
    gate, up = F.linear(rms_norm(x, norm, eps), w13).chunk(2, dim=-1)
    return x, F.silu(gate) * up


def down(x, act, w2):
    return x + F.linear(act, w2)


def split_pieces(mode: str, shipped) -> Pieces:
    kw = dict(fullgraph=True, dynamic=False, mode=mode)
    first, second = torch.compile(out_and_act, **kw), torch.compile(down, **kw)

    def attn_out_mlp(x, o, wo, norm, w13, w2, eps, reduce):
        assert reduce is None
        x, act = first(x, o, wo, norm, w13, eps)
        return second(x, act, w2)
    base = shipped(mode)
    return Pieces(base.attn_in, attn_out_mlp, base.head)


def measure(loaded, label: str, bw: float) -> None:
    native = NativeBackend(loaded, {"kv": "static", "compile": "full", "attention": "sdpa"},
                           lambda e: None, max_batch=1, context=4096, graph_batches=[1])
    nd.timed_run(native, loaded, 1, 128, 8)
    g = nd.gaps_ms(nd.timed_run(native, loaded, 1, 128, 257))
    floor = (native.model.weight_bytes() + (128 + 128) * native.cache.token_bytes) / bw / 1e6
    tpot = statistics.fmean(g)
    print(f"# {label}: TPOT {tpot:.3f} ms, floor {floor:.3f} ms ({tpot / floor:.2f}x)", flush=True)
    nd.step_profile(native, loaded)
    native.close()


def main() -> None:
    bw = nd.read_bandwidth()
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | read {bw:.0f} GB/s")
    loaded = models.load(specs.resolve("synthetic:llama-2-7b"), "cuda", "bf16", "sdpa",
                         lambda *a: None)
    measure(loaded, "o + MLP in one piece (as shipped)", bw)
    shipped = graphs.compiled
    graphs.compiled = lambda mode: split_pieces(mode, shipped)
    measure(loaded, "o + MLP cut before the down projection", bw)


if __name__ == "__main__":
    main()

"""backend=native on a CUDA GPU: compile=full (fused.py's tuned kernels, or the inductor-compiled
pieces, in CUDA graphs) gives the eager path's greedy ids, never recompiles as a sequence grows,
and paged equals static under graphs; the kernels against torch's ops in bf16.
Skipped on a CPU; run on the device machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmtop.engine import generate, models
from llmtop.engine import spec as specs
from llmtop.engine.backends.native import NativeBackend
from llmtop.engine.generate import Sampling
from llmtop.engine.native.graphs import KERNELS
from llmtop.engine.protocol import EngineEvent, Generate

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny() -> models.Loaded:
    return models.load(specs.resolve("synthetic:tiny"), "cuda", "fp32", "sdpa", lambda *a: None)


def inputs(loaded: models.Loaded, prompt_len: int, batch: int = 1) -> generate.Inputs:
    req = Generate(prompt_len=prompt_len, batch=batch, max_new_tokens=64, seed=prompt_len)
    return generate.prepare(req, None, loaded.model.config.vocab_size, 4096, "cuda")


def ids(backend: NativeBackend, inp: generate.Inputs, n: int) -> list[list[int]]:
    return [s.ids for s in backend.generate_steps(inp, n, Sampling(), set(), True, lambda: False)]


def build(loaded: models.Loaded, events: list, mode: str | None = None,
          **opts: str) -> NativeBackend:
    """mode None: inductor's default mode (the quickest compile) unless the test asks for one."""
    return NativeBackend(loaded, {"kv": "static", "compile": "off", "attention": "sdpa", **opts},
                         events.append, max_batch=4, context=1024, compile_mode=mode)


@pytest.mark.parametrize("mode", [None, KERNELS])
def test_compile_full_equals_eager_and_never_recompiles(tiny, mode):
    from torch._dynamo.utils import counters

    events: list = []
    graphed = build(tiny, events, mode, compile="full")
    kinds = [e.kind for e in events if isinstance(e, EngineEvent)]
    assert kinds == ["compile", "capture"]
    assert ("tilings timed on this card" in events[0].detail) == (mode == KERNELS)
    eager = build(tiny, [])
    frames = dict(counters["stats"])
    for plen, batch in ((16, 1), (300, 3), (700, 2)):   # spans 256 .. 1024, a padded batch
        inp = inputs(tiny, plen, batch)
        assert ids(graphed, inp, 64) == ids(eager, inp, 64)
    assert dict(counters["stats"]) == frames   # no frame compiled after construction


@pytest.mark.parametrize("mode", [None, KERNELS])
def test_paged_equals_static_under_graphs(tiny, mode):
    static = build(tiny, [], mode, compile="full")
    paged = build(tiny, [], mode, compile="full", kv="paged")
    inp = inputs(tiny, 250, 2)   # crosses a span and many pages while it decodes
    assert ids(paged, inp, 40) == ids(static, inp, 40)
    assert paged.run_info()["kv_reserved_bytes"] < static.run_info()["kv_reserved_bytes"]


def test_native_equals_hf_on_cuda_fp32(tiny):
    from transformers import DynamicCache

    inp = inputs(tiny, 32)
    hf = [s.ids for s in generate.run(tiny.model, inp, 32, Sampling(),
                                      DynamicCache(config=tiny.model.config), set(), True,
                                      lambda: False)]
    assert ids(build(tiny, [], KERNELS, compile="full"), inp, 32) == hf
    torch.cuda.synchronize()


def test_dependent_launch_gives_the_serial_launch_ids(tiny):
    """Under programmatic dependent launch each kernel starts while the one before finishes: a
    kernel that read or wrote before its wait would change ids (tiny kernels: wide overlap)."""
    events: list = []
    best = build(tiny, events, KERNELS, compile="full")
    serial = build(tiny, [], "kernels-serial", compile="full")
    hopper = torch.cuda.get_device_capability() >= (9, 0)
    assert ("(dependent launch)" in events[0].detail) == hopper
    for plen, batch in ((16, 1), (300, 3)):
        inp = inputs(tiny, plen, batch)
        assert ids(best, inp, 64) == ids(serial, inp, 64)


@pytest.mark.parametrize("batch,pdl", [(1, False), (5, False), (1, True), (5, True)])
def test_gemv_kernels_match_torch_ops_in_bf16(batch, pdl):
    """Each fused GEMV against the torch ops it replaces (model.py), 7B-like widths."""
    from llmtop.engine.native.gemv import Tiling, add_norm, gemv
    from llmtop.engine.native.model import rms_norm
    from llmtop.engine.native.overlap import Overlap

    if pdl and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    ov = Overlap(pdl)

    torch.manual_seed(batch)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    n, k, eps = 1000, 4096, 1e-5
    x, res = torch.randn(batch, k, **bf), torch.randn(batch, n, **bf)
    w = torch.randn(2 * n, k, **bf) * 0.02
    norm = torch.rand(n, **bf) + 0.5

    def close(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item() < 1e-2

    for t in (Tiling(32, 128, 4, 4), Tiling(64, 256, 4, 3, splits=4)):
        assert close(gemv(x, w[:n], t, overlap=ov), F.linear(x, w[:n]))
        g, u = F.linear(x, w).chunk(2, -1)
        assert close(gemv(x, w, t, swiglu=True, overlap=ov), F.silu(g) * u)
        parts = gemv(x, w[:n], t, partial=True, overlap=ov)
        assert parts.shape == (t.splits, batch, n) and parts.dtype == torch.float32
        x_out, h = add_norm(parts, res, norm, eps, ov)
        assert close(x_out, res + F.linear(x, w[:n]))
        assert close(h, rms_norm(res + F.linear(x, w[:n]), norm, eps))
        assert close(gemv(x, w[:n], t, out_dtype=torch.float32, overlap=ov),
                     F.linear(x, w[:n]).float())


@pytest.mark.parametrize("heads,kv_heads,dim,dtype", [(32, 32, 128, torch.bfloat16),
                                                     (9, 3, 64, torch.float32)])
def test_decode_kernel_matches_sdpa_static_and_paged(heads, kv_heads, dim, dtype):
    """The in-place decode kernel against SDPA over each row's own slots, on random data; the
    paged pool (pages shuffled) gives the static result."""
    from llmtop.engine.native.attention import decode_attention

    torch.manual_seed(heads)
    batch, slots, page = 3, 1040, 16
    q = torch.randn(batch, heads, dim, device="cuda", dtype=dtype)
    k = torch.randn(batch, slots, kv_heads, dim, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    lens = torch.tensor([slots - 1, 0, 517], device="cuda")
    ref = []
    for r in range(batch):
        n = int(lens[r]) + 1
        kr, vr = (t[r, :n].transpose(0, 1).repeat_interleave(heads // kv_heads, 0) for t in (k, v))
        ref.append(F.scaled_dot_product_attention(q[r, :, None].float(), kr.float(), vr.float()))
    ref = torch.stack(ref).reshape(batch, 1, -1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    static = decode_attention(q, k, v, lens, None, 1).float()
    assert ((static - ref).norm() / ref.norm()).item() < tol
    per_row = slots // page
    table = (torch.randperm(batch * per_row, device="cuda") + 1).view(batch, per_row)
    kp = torch.empty(batch * per_row + 1, page, kv_heads, dim, device="cuda", dtype=dtype)
    vp = torch.empty_like(kp)
    kp[table] = k.view(batch, per_row, page, kv_heads, dim)
    vp[table] = v.view(batch, per_row, page, kv_heads, dim)
    paged = decode_attention(q, kp, vp, lens, table, page).float()
    assert torch.equal(paged, static)

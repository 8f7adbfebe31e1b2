"""kv=paged: transformers' continuous batching on the real embedded model, against the dynamic
path (generate.run) token for token."""

from __future__ import annotations

import threading

import pytest
import torch

from llmtop.engine import generate, paged
from llmtop.engine.generate import Sampling


@pytest.fixture(scope="module")
def lm():
    """The embedded model in fp32 (where greedy paths must agree exactly), one torch thread: on
    a loaded 2-core machine a 2-thread OpenMP team makes small GEMMs in the main thread up to
    ~100x slower, and this module runs both paths many times."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtop.engine import models, spec

    models.convert_embedded(lambda *a: None)  # no-op once the cache exists
    folder = spec.embedded_cache()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    yield model, tok
    torch.set_num_threads(threads)


def encode(tok, prompts: list[str], chat: bool = False) -> generate.Inputs:
    if chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    return generate.Inputs(enc["input_ids"], enc["attention_mask"], prompts,
                           int(enc["input_ids"].shape[1]))


def dynamic(model, inputs, n, eos=frozenset(), ignore_eos=True, sampling=None) -> list:
    from transformers import DynamicCache

    return list(generate.run(model, inputs, n, sampling or Sampling(),
                             DynamicCache(config=model.config), set(eos), ignore_eos,
                             lambda: False))


def live_ids(steps, r: int) -> list[int]:
    return [s.ids[r] for s in steps if s.live[r]]


def test_greedy_batch_equals_the_dynamic_path(lm):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is", "Hello, my name is Bob and I",
                          "1, 2, 3,"])
    assert int(inputs.attention_mask.sum()) < inputs.attention_mask.numel()  # rows are padded
    threads = set(threading.enumerate())  # others' threads may end meanwhile
    info: dict = {}
    ours = list(paged.run_paged(model, inputs, 16, Sampling(), set(), True, lambda: False, info))
    ref = dynamic(model, inputs, 16)
    assert [s.index for s in ours] == list(range(16))
    assert [s.ids for s in ours] == [s.ids for s in ref]
    assert [s.live for s in ours] == [s.live for s in ref]
    assert all(a.t_ns < b.t_ns for a, b in zip(ours, ours[1:]))
    # each request's own stamp, taken by the batching thread, precedes our receipt
    assert all(0 < h <= s.t_ns for s in ours for h in s.host_t_ns)
    assert info["attention"] == "sdpa" and info["page_size"] == paged.PAGE_SIZE
    assert info["num_blocks"] >= 3
    assert model.config._attn_implementation == "sdpa"
    assert not set(threading.enumerate()) - threads   # the batching thread is gone


def test_eos_live_flags_and_the_early_end_match_the_dynamic_path(lm):
    model, tok = lm
    inputs = encode(tok, ["What is 2+2?", "Name the largest continent."], chat=True)
    eos = {tok.eos_token_id}
    ours = list(paged.run_paged(model, inputs, 48, Sampling(), eos, False, lambda: False))
    ref = dynamic(model, inputs, 48, eos, ignore_eos=False)
    assert not ref[-1].live[0] and len(ref) < 48   # precondition: row 0 ends first, on EOS
    assert len(ours) == len(ref)
    assert [s.live for s in ours] == [s.live for s in ref]
    for r in range(2):
        assert live_ids(ours, r) == live_ids(ref, r)
        assert live_ids(ours, r)[-1] in eos
    assert "4" in tok.decode(live_ids(ours, 0))


def test_eager_runs_as_paged_eager_and_is_restored(lm):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is"])
    model.set_attn_implementation("eager")
    try:
        info: dict = {}
        ours = list(paged.run_paged(model, inputs, 8, Sampling(), set(), True, lambda: False,
                                    info))
        assert info["attention"] == "paged|eager"
        assert model.config._attn_implementation == "eager"
        assert [s.ids for s in ours] == [s.ids for s in dynamic(model, inputs, 8)]
    finally:
        model.set_attn_implementation("sdpa")


def test_stop_and_a_closed_iterator_end_the_batching_thread(lm):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is", "Once upon a time"])
    threads = set(threading.enumerate())  # others' threads may end meanwhile
    seen: list = []
    for s in paged.run_paged(model, inputs, 200, Sampling(), set(), True,
                             lambda: len(seen) >= 3):
        seen.append(s)
    assert [s.index for s in seen] == [0, 1, 2]
    assert not set(threading.enumerate()) - threads
    it = paged.run_paged(model, inputs, 200, Sampling(), set(), True, lambda: False)
    next(it)
    assert len(set(threading.enumerate()) - threads) == 1
    it.close()
    assert not set(threading.enumerate()) - threads
    assert model.config._attn_implementation == "sdpa"


def test_sampling_is_seeded(lm):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is"] * 2)

    def run(seed: int) -> list[list[int]]:
        s = Sampling(True, 1.5, 1.0, 0, torch.Generator().manual_seed(seed))
        return [x.ids for x in paged.run_paged(model, inputs, 4, s, set(), True,
                                               lambda: False)]
    a, b, c = run(1), run(1), run(2)
    assert a == b and a != c
    assert [x[0] for x in a] != [x[1] for x in a]   # rows of one prompt sample differently


def test_a_failing_forward_is_an_error_and_cleans_up(lm, monkeypatch):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is"])
    threads = set(threading.enumerate())  # others' threads may end meanwhile

    def boom(*a, **k):
        raise RuntimeError("boom in the forward pass")

    monkeypatch.setattr(model.model, "forward", boom)
    with pytest.raises(RuntimeError, match="boom in the forward pass"):
        list(paged.run_paged(model, inputs, 4, Sampling(), set(), True, lambda: False))
    assert not set(threading.enumerate()) - threads
    assert model.config._attn_implementation == "sdpa"


def test_a_cache_that_cannot_fit_is_an_out_of_memory_error(lm):
    model, tok = lm
    inputs = encode(tok, ["The largest continent is"])
    threads = set(threading.enumerate())  # others' threads may end meanwhile
    # one page of 4M tokens: hundreds of GB of KV cache, refused before any allocation
    with pytest.raises(torch.OutOfMemoryError, match="available memory"):
        list(paged.run_paged(model, inputs, 4, Sampling(), set(), True, lambda: False,
                             page_size=2 ** 22))
    assert not set(threading.enumerate()) - threads
    assert model.config._attn_implementation == "sdpa"


def test_availability_and_refused_attention():
    assert paged.paged_available() == (True, "")
    why = paged.paged_conflict("flex")
    assert why and "flex" in why and "\n" not in why
    assert all(paged.paged_conflict(a) is None
               for a in ("eager", "sdpa", "flash", "flash_attention_2"))


def test_step_assembler_waits_for_every_live_request():
    asm = paged.StepAssembler(2, {2}, fill_id=2)
    asm.update(0, [10, 11], False)
    assert asm.pop(1) == []                          # row 1 has nothing yet
    asm.update(1, [20], False)
    [s] = asm.pop(2)
    assert (s.index, s.ids, s.t_ns, s.live) == (0, [10, 20], 2, [True, True])
    asm.update(1, [20, 2], True, [5, 6])             # row 1 ends on EOS at index 1
    [s] = asm.pop(3)
    assert (s.ids, s.live, s.host_t_ns) == ([11, 2], [True, True], [0, 6])
    asm.update(0, [10, 11, 12], True)
    [s] = asm.pop(4)
    assert (s.ids, s.live) == ([12, 2], [True, False])  # an ended row repeats its last id
    assert asm.done and asm.pop(5) == []

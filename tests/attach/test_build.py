"""The record builder: tokens per chunk as the server counts them, never spread in time."""

from __future__ import annotations

import pytest

from llmtop.engine.endpoint import build
from llmtop.engine.endpoint.stream import Chunk, Request, Server, Trace, _openai_event

MS = 1_000_000
SERVER = Server("http://127.0.0.1:8000", "openai", "vllm", "m")


def test_continuous_usage_counts_each_chunk() -> None:
    """vLLM's continuous_usage_stats: a cumulative count in every chunk; the final usage-only
    chunk repeats the total and adds no chunk."""
    trace = Trace(start_ns=0)
    for t, text, count in ((10, "", 0), (20, "a", 1), (30, "bc", 3), (40, "d", 4)):
        _openai_event({"choices": [{"index": 0, "text": text}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": count}}, t * MS, trace)
    _openai_event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}, 41 * MS, trace)
    assert [c.tokens for c in trace.chunks] == [1, 2, 1]
    assert trace.usage_tokens == 4 and trace.prompt_tokens == 5


def test_final_usage_only_counts_the_total() -> None:
    """transformers serve: usage once, in the chunk with the finish reason and no text."""
    trace = Trace(start_ns=0)
    _openai_event({"choices": [{"text": " a"}]}, 1 * MS, trace)
    _openai_event({"choices": [{"text": "", "finish_reason": "length"}],
                   "usage": {"completion_tokens": 1, "prompt_tokens": 4}}, 2 * MS, trace)
    assert [c.tokens for c in trace.chunks] == [None]
    assert build.token_counts(trace) == ([1], "usage") and trace.finish == "length"


def test_multi_token_chunk_shares_its_arrival_stamp() -> None:
    trace = Trace(start_ns=0, chunks=[Chunk(10 * MS, "a", 1), Chunk(30 * MS, "bc", 2),
                                      Chunk(40 * MS, "d", 1)], usage_tokens=4, finish="length")
    rec = build.build(SERVER, Request("p", 4), [trace])
    tokens = rec["tokens"][0]
    assert [t["t_ns"] for t in tokens] == [10 * MS, 30 * MS, 30 * MS, 40 * MS]
    assert [t.get("chunk_tokens") for t in tokens] == [None, 2, 2, None]
    assert "".join(t["text"] for t in tokens) == "abcd"
    m = rec["metrics"]
    assert m["n_tokens"] == 4 and m["ttft_ms"] == 10 and m["tpot_ms"] == 10
    assert m["itl_ms"] == [20, 0, 10]        # the chunk's tokens arrived together: gap 0
    assert rec["endpoint"]["multi_token_chunks"] == 1
    assert rec["endpoint"]["token_counts"] == ["server"]


def test_goodput_counts_requests_within_the_slo() -> None:
    fast = Trace(0, [Chunk(10 * MS, "a", 1), Chunk(20 * MS, "b", 1)], 2, finish="length")
    slow = Trace(0, [Chunk(90 * MS, "a", 1), Chunk(100 * MS, "b", 1)], 2, finish="length")
    rec = build.build(SERVER, Request("p", 2), [fast, slow], slo={"ttft": 50, "tpot": 20})
    s = rec["serving"]
    assert s["good_requests"] == 1 and s["completed"] == 2
    assert s["goodput"] == pytest.approx(1 / 0.1)          # 1 good request over 100 ms
    assert s["output_throughput"] == pytest.approx(4 / 0.1)
    assert rec["metrics"]["ttft_ms"] == pytest.approx(50)    # the mean over requests
    assert rec["schema"] == "llmtop.run/1"


def test_no_token_means_no_record() -> None:
    assert build.build(SERVER, Request("p", 2), [Trace(0)]) is None


def test_attach_imports_no_torch() -> None:
    """The client builds its records without torch (record.build(probe_torch=False))."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from llmtop import attach\n"
            "from llmtop.engine.endpoint import build\n"
            "from llmtop.engine.endpoint.stream import Chunk, Request, Server, Trace\n"
            "t = Trace(0, [Chunk(1, 'a', 1)], 1, finish='stop')\n"
            "rec = build.build(Server('http://127.0.0.1:1', 'openai', 'vllm', 'm'), Request('p'), [t])\n"
            "assert rec['metrics']['n_tokens'] == 1\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_metrics_page_gauges() -> None:
    from llmtop.engine.endpoint import prom

    page = ('# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{model_name="a"} 2.0\n'
            'vllm:num_requests_running{model_name="b"} 1.0\n'
            '# TYPE vllm:kv_cache_usage_perc gauge\n'
            'vllm:kv_cache_usage_perc{model_name="a"} 0.25\n'
            '# TYPE vllm:gpu_cache_usage_perc gauge\n'
            'vllm:gpu_cache_usage_perc{model_name="a"} 0.25\n'
            '# TYPE vllm:prompt_tokens_total counter\n'
            'vllm:prompt_tokens_total{model_name="a"} 99.0\n')
    assert prom.parse(page) == {"running": 3.0, "kv_cache_usage": 0.25}

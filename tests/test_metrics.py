import math

import pytest

from llmtop.engine import metrics, protocol


def test_vllm_definitions_and_the_latency_identity():
    start = 1_000_000
    stamps = [start + 50_000_000, start + 60_000_000, start + 75_000_000, start + 80_000_000]
    m = metrics.run_metrics(start, stamps, batch=2, prompt_tokens=10)
    assert m.ttft_ms == 50.0
    assert m.tpot_ms == pytest.approx(10.0)
    assert m.itl_ms == [10.0, 15.0, 5.0]
    assert m.e2e_ms == pytest.approx(m.ttft_ms + m.tpot_ms * 3)
    assert m.tokens_per_s == pytest.approx(2 * 4 / 0.080)
    assert m.prefill_tokens_per_s == pytest.approx(2 * 10 / 0.050)
    assert m.itl.p50 == 10.0 and m.itl.mean == 10.0


def test_single_token_run_and_empty_run():
    m = metrics.run_metrics(0, [5_000_000])
    assert m.tpot_ms == 0.0 and m.e2e_ms == m.ttft_ms == 5.0 and math.isnan(m.itl.p99)
    with pytest.raises(ValueError):
        metrics.run_metrics(0, [])


def test_percentile_matches_linear_interpolation():
    values = [1, 2, 3, 4, 10]
    assert metrics.percentile(values, 50) == 3
    assert metrics.percentile(values, 90) == pytest.approx(7.6)
    assert metrics.percentile(values, 0) == 1 and metrics.percentile(values, 100) == 10


def test_roofline_floors():
    m = metrics.run_metrics(0, [100_000_000, 110_000_000], batch=1, prompt_tokens=2048)
    r = metrics.roofline(m, weight_bytes=13_480_000_000, params=6_740_000_000,
                         kv_bytes_per_token=0, mem_bw_gb_s=3000, peak_tflops=800)
    assert r.decode_floor_ms == pytest.approx(4.493, rel=1e-3)
    assert r.decode_pct == pytest.approx(44.93, rel=1e-3)
    assert r.prefill_floor_ms == pytest.approx(2 * 6.74e9 * 2048 / 800e12 * 1e3)


def test_roofline_tensor_parallel_ranks_add_their_ceilings():
    """4 ranks split weights and FLOPs: the floors are a quarter (70B at TP=4 read 150 %)."""
    m = metrics.run_metrics(0, [100_000_000, 110_000_000], batch=1, prompt_tokens=2048)
    one = metrics.roofline(m, 13_480_000_000, 6_740_000_000, 0, 3000, 800)
    four = metrics.roofline(m, 13_480_000_000, 6_740_000_000, 0, 3000, 800, ranks=4)
    assert four.decode_floor_ms == pytest.approx(one.decode_floor_ms / 4)
    assert four.prefill_pct == pytest.approx(one.prefill_pct / 4)
    assert four.achieved_gb_s == pytest.approx(one.achieved_gb_s)


def test_protocol_round_trip_and_version_check():
    msg = protocol.Token(run_id=3, index=1, ids=[5, 6], texts=["a", "b"], t_ns=42)
    wire = protocol.encode(msg)
    assert wire["type"] == "Token" and wire["v"] == protocol.PROTOCOL_VERSION
    assert protocol.decode(wire) == msg
    with pytest.raises(ValueError, match="protocol version"):
        protocol.decode({**wire, "v": 99})
    with pytest.raises(ValueError, match="unknown message type"):
        protocol.decode({**wire, "type": "Nope"})


def test_first_divergence_is_the_one_rule_for_token_ids():
    from llmtop.engine.metrics import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) is None   # one run stopped earlier (EOS)
    assert first_divergence([], [4]) is None


def test_a_stall_in_the_middle_counts_in_tpot_not_in_steady_tpot():
    """A 31 s recompile between tokens 100 and 101 of 256 (issue 15's compile_full point)."""
    ms = 1_000_000
    stamps, t = [], 50 * ms
    for i in range(256):
        stamps.append(t)
        t += (31_000 + 20) * ms if i == 100 else 20 * ms
    stall = (stamps[100] + 5 * ms, stamps[100] + 5 * ms + 31_000 * ms)
    m = metrics.run_metrics(0, stamps, stalls=[stall, (stamps[-1] + ms, stamps[-1] + 2 * ms)])
    assert m.tpot_ms == pytest.approx((255 * 20 + 31_000) / 255)   # vLLM's TPOT keeps it
    assert m.tpot_steady_ms == pytest.approx(20.0)
    assert m.stalls == 1 and m.stall_ms == pytest.approx(31_000)    # the later one is outside
    d = m.to_dict()
    assert (d["tpot_steady_ms"], d["stalls"], d["stall_ms"]) == (m.tpot_steady_ms, 1, m.stall_ms)
    calm = metrics.run_metrics(0, stamps[:50])
    assert calm.tpot_steady_ms == pytest.approx(calm.tpot_ms) and calm.stalls == 0


def test_one_token_run_has_no_decode_percentage_and_a_beaten_floor_is_never_shown():
    one = metrics.run_metrics(0, [100_000_000], prompt_tokens=2048)
    r = metrics.roofline(one, 13_480_000_000, 6_740_000_000, 0, 3000, 800)
    assert r.decode_pct is None and r.achieved_gb_s is None and r.prefill_pct is not None
    fast = metrics.run_metrics(0, [1_000_000, 1_500_000], prompt_tokens=2048)  # 1 ms prefill
    r = metrics.roofline(fast, 13_480_000_000, 6_740_000_000, 0, 3000, 800)
    assert r.prefill_pct is None and r.decode_pct is None and r.beaten == ["decode", "prefill"]


def test_prefill_floor_counts_the_head_once():
    m = metrics.run_metrics(0, [100_000_000, 110_000_000], prompt_tokens=4)
    body = metrics.roofline(m, 270_000_000, 106_000_000, 0, 30, 0.05, head_params=28_000_000)
    assert body.prefill_floor_ms == pytest.approx(2 * (106e6 * 4 + 28e6) / 0.05e12 * 1e3)
    whole = metrics.roofline(m, 270_000_000, 134_000_000, 0, 30, 0.05)
    assert whole.prefill_floor_ms == pytest.approx(2 * 134e6 * 4 / 0.05e12 * 1e3)

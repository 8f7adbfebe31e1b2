"""`llmtop compare`: differences and ratios for run records and for bench results."""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import TINY, llmtop


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    paths = []
    for attention in ("sdpa", "eager"):
        path = d / f"{attention}.json"
        p = llmtop("run", "--headless", "--model", "synthetic:tiny", "--device", "cpu", "--prompt-len", "16",
                   "--max-new-tokens", "5", "--ignore-eos", "--opt", f"attention={attention}", "--json", str(path))
        assert p.returncode == 0, p.stderr
        paths.append(path)
    return paths


def _row(stdout: str, label: str) -> list[str]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith(label + "  "))
    return line[len(label):].split()


def test_compare_run_records_prints_differences_and_ratios(records):
    a, b = records
    p = llmtop("compare", str(a), str(b))
    assert p.returncode == 0, p.stderr
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert "config.opts.attention: sdpa -> eager" in p.stdout
    for label, key in (("TTFT ms", "ttft_ms"), ("TPOT ms", "tpot_ms"), ("latency ms", "e2e_ms")):
        cells = _row(p.stdout, label)
        va, vb = ra["metrics"][key], rb["metrics"][key]
        assert cells[0] == f"{va:,.2f}" and cells[1] == f"{vb:,.2f}"
        assert cells[2] == f"{vb / va:.3f}x"
        factor = vb / va if vb > va else va / vb
        if abs(vb / va - 1) >= 0.005:
            assert f"B {factor:.2f}x {'slower' if vb > va else 'faster'}" in " ".join(cells[3:])
    assert "tokens: " in p.stdout           # same request, greedy: the guard compares the tokens
    pj = llmtop("compare", str(a), str(b), "--json")
    data = json.loads(pj.stdout)
    ttft = next(r for r in data["metrics"] if r["metric"] == "TTFT ms")
    assert ttft["ratio"] == rb["metrics"]["ttft_ms"] / ra["metrics"]["ttft_ms"]


def test_compare_bench_results_matches_points(tmp_path):
    out = tmp_path / "a"
    p = llmtop("bench", *TINY, "--batch", "1", "--prompt-len", "8", "--max-new-tokens", "3", "--repeat", "1",
               "--warmup", "0", "--preset", "baseline", "--out", str(out), "--no-plots")
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "bench.json").read_text())
    other = json.loads(json.dumps(data))
    other["points"][0]["ttft_ms"] *= 2
    other["points"][0]["tpot_ms"] /= 4
    other["versions"]["torch"] = "9.9"
    bpath = tmp_path / "b.json"
    bpath.write_text(json.dumps(other))
    p = llmtop("compare", str(out), str(bpath))
    assert p.returncode == 0, p.stderr
    assert f"versions.torch: {data['versions']['torch']} -> 9.9" in p.stdout
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("baseline "))
    assert "2.000x" in line and "0.250x" in line
    assert "TTFT: B 2.00x slower" in line and "TPOT: B 4.00x faster" in line
    # a folder, its points.jsonl and its bench.json are the same results
    shutil.copy(out / "bench.json", tmp_path / "copy.json")
    p = llmtop("compare", str(out / "points.jsonl"), str(tmp_path / "copy.json"))
    assert p.returncode == 0 and "1.000x" in p.stdout


def test_compare_refuses_unlike_or_damaged_files(records, tmp_path):
    a, _ = records
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "llmtop.run/1", "metr')
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    folder = tmp_path / "empty"
    folder.mkdir()
    for args, words in (([str(a), str(bad)], "bad.json: not valid JSON"),
                        ([str(a), str(other)], "neither an llmtop run record nor a bench result"),
                        ([str(a), str(tmp_path / "none.json")], "none.json: no such file or folder"),
                        ([str(a), str(folder)], "holds no bench results")):
        p = llmtop("compare", *args)
        assert p.returncode == 2, args
        assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Traceback" not in p.stderr

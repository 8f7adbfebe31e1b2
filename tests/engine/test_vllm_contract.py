"""backend=vllm's contract (scripts/vllm_contract.py) against the real vLLM 0.26.0 wheel, read
by inspection, when the wheel is here (LLMTOP_VLLM_WHEEL, or /tmp/vllm-wheel from
`pip download --no-deps vllm==0.26.0 -d /tmp/vllm-wheel`); against the fake always."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vllm_contract.py"
_spec = importlib.util.spec_from_file_location("vllm_contract", SCRIPT)
contract = importlib.util.module_from_spec(_spec)
sys.modules["vllm_contract"] = contract   # its dataclass looks its module up
_spec.loader.exec_module(contract)


def test_the_fake_keeps_the_contract(capsys):
    report = contract.Report()
    contract.check_tree(contract.Tree(str(contract.FAKE)), report, real=False)
    out = capsys.readouterr().out
    assert report.failed == 0, out
    assert report.passed > 40 and "EngineArgs has no swap_space" in out


def test_the_contract_fails_where_the_tree_differs(tmp_path, capsys):
    """The check can fail: a copy of the fake whose EngineArgs still has swap_space and whose
    add_request takes its arguments in another order."""
    import shutil

    shutil.copytree(contract.FAKE / "vllm", tmp_path / "vllm")
    args = tmp_path / "vllm" / "engine" / "arg_utils.py"
    args.write_text(args.read_text() + "    swap_space: float = 4\n")
    eng = tmp_path / "vllm" / "engine" / "llm_engine.py"
    eng.write_text(eng.read_text().replace("def add_request(self, request_id: str, prompt: Any, "
                                           "params: Any,", "def add_request(self, prompt: Any, "
                                           "request_id: str, params: Any,"))
    report = contract.Report()
    contract.check_tree(contract.Tree(str(tmp_path)), report, real=False)
    out = capsys.readouterr().out
    assert report.failed == 2, out
    assert "FAIL  EngineArgs has no swap_space" in out
    assert "FAIL  LLMEngine.add_request(request_id, prompt, params)" in out


def test_the_real_vllm_0_26_wheel_keeps_the_contract(capsys):
    wheel = contract.find_wheel([])
    if wheel is None or not Path(wheel).is_file():
        pytest.skip("no vLLM 0.26.0 wheel here (pip download --no-deps vllm==0.26.0 "
                    "-d /tmp/vllm-wheel)")
    rc = contract.main([wheel])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 failed" in out

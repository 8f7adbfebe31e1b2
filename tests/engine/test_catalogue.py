"""The catalogue is read from one unit per axis (engine/optimizations/): every name has its
help, a new unit is one new file, and the default attention option never lets PyTorch pick
cuDNN attention (#15.1: the default must be at least as fast as the eager baseline)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from llmtop.engine import catalogue, optimizations
from llmtop.engine.optimizations import Axis


def test_every_axis_and_option_has_its_help_and_a_default_with_a_reason():
    assert list(catalogue.AXES) == ["attention", "kv", "compile", "gemm", "dtype", "backend"]
    for name, axis in catalogue.AXIS_INFO.items():
        assert catalogue.HELP[name] and axis.why_default
        assert set(catalogue.OPTION_HELP[name]) == set(catalogue.AXES[name])
        assert all(catalogue.OPTION_HELP[name].values())
        assert catalogue.DEFAULTS[name] in catalogue.AXES[name]
    assert set(catalogue.PRESET_HELP) == set(catalogue.PRESETS)
    assert set(catalogue.RELOAD) == {"compile", "dtype", "backend"}


def test_a_missing_help_or_an_unknown_default_cannot_be_written():
    with pytest.raises(ValueError, match="no help"):
        Axis("x", 9, "an axis", {"a": "option a", "b": ""}, "a", "why")
    with pytest.raises(ValueError, match="default"):
        Axis("x", 9, "an axis", {"a": "option a"}, "z", "why")
    with pytest.raises(ValueError, match="preset"):
        Axis("x", 9, "an axis", {"a": "option a"}, "a", "why", presets={"max": "q"})


def test_a_new_axis_is_one_new_file(tmp_path, monkeypatch):
    (tmp_path / "speculation.py").write_text(textwrap.dedent('''
        from llmtop.engine.optimizations import Availability, Axis

        AXIS = Axis(name="speculation", order=2.5, help="speculative decoding",
                    options={"off": "one token a step", "ngram": "prompt-lookup drafts"},
                    default="off", why_default="drafts cost a verify step")

        def conflicts(opts):
            if opts.get("speculation") == "ngram" and opts.get("kv") == "paged":
                return "speculation=ngram needs kv=dynamic or static"

        def availability(here):
            return {"off": Availability(True), "ngram": Availability(True)}
    '''))
    monkeypatch.setattr(optimizations, "__path__", [*optimizations.__path__, str(tmp_path)])
    units = catalogue._units()
    assert [u.AXIS.name for u in units] == ["attention", "kv", "compile", "speculation", "gemm",
                                            "dtype", "backend"]
    monkeypatch.setattr(catalogue, "UNITS", units)
    assert catalogue.conflicts({"speculation": "ngram", "kv": "paged"}).startswith("speculation")
    assert catalogue.availability("cpu")["speculation"]["ngram"].ok


def test_the_default_attention_never_picks_cudnn_and_says_why():
    from llmtop.engine.optimizations import attention

    impl, allowed = attention.IMPL[catalogue.DEFAULTS["attention"]]
    assert impl == "sdpa" and "CUDNN_ATTENTION" not in allowed
    assert "cuDNN" in attention.AXIS.why_default and "eager" in attention.AXIS.why_default
    assert set(attention.IMPL) == set(catalogue.AXES["attention"])
    assert attention.IMPL["cudnn"][1] == ("CUDNN_ATTENTION",)   # still there when asked for


def test_the_default_pin_runs_sdpa_on_the_cpu_with_cudnn_off():
    """The pin the engine enters for attention=sdpa: SDPA still runs (CPU flash or math), and
    inside it cuDNN attention is disabled (on a GPU that is what keeps decode off cuDNN)."""
    import torch
    import torch.nn.functional as F

    from llmtop.engine.backends.hf import sdpa_backend

    q = torch.randn(1, 4, 8, 16)
    ref = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    with sdpa_backend("sdpa"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert torch.allclose(out, ref, atol=1e-5)


def test_cli_choices_come_from_the_catalogue():
    p = subprocess.run([sys.executable, "-m", "llmtop", "run", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert "{" + ",".join(catalogue.PRESETS) + "}" in p.stdout
    assert "{" + ",".join(catalogue.AXES["dtype"]) + "}" in p.stdout

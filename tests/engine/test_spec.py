import pytest

from llmtop.engine import spec


def test_synthetic_and_embedded_names():
    assert spec.resolve("synthetic:llama-2-7b").synthetic
    assert spec.resolve("embedded").kind == "embedded"
    with pytest.raises(spec.ModelSpecError, match="unknown synthetic shape"):
        spec.resolve("synthetic:llama-9")


def test_local_paths(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(spec.ModelSpecError, match="without config.json"):
        spec.resolve(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    assert spec.resolve(str(tmp_path / "m")).kind == "hf_dir"
    with pytest.raises(spec.ModelSpecError, match="no such GGUF file"):
        spec.resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    assert spec.resolve(str(tmp_path / "x.gguf")).kind == "gguf"


def test_hub_ids_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(spec.ModelSpecError, match="no downloads"):
        spec.resolve("meta-llama/Llama-2-7b-hf")
    (tmp_path / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "abc").mkdir(parents=True)
    assert spec.resolve("meta-llama/Llama-2-7b-hf").kind == "hub"

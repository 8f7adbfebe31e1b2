"""Engine backends: each one way of running a loaded model (hf, vllm, native), one module each."""

"""llmtop's own Llama decode path (backend=native): a compact forward written for decode speed.

model.py takes the weights out of the loaded transformers model (fused, never copied twice on
the device) and runs the forward; kv.py holds the static and paged KV caches; graphs.py
captures the decode step once per batch size and KV bucket with CUDA graphs; tp.py shards the
weights across tensor-parallel ranks and all-reduces with functional collectives.
"""

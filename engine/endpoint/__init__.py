"""A client for running inference servers: `llmtop attach URL` and `llmtop bench --endpoint`.

llmtop is only a client here (it opens no port). Streamed chunks are stamped on arrival at this
process, so every figure includes the network and the server's streaming interval; the records
keep the engine run's schema (engine/record.py) with `backend=endpoint`. Imports no torch.
"""

APIS = ("openai", "tgi")              # --api: OpenAI-compatible streaming, TGI's /generate_stream
SLO_KEYS = ("ttft", "tpot", "e2el")   # --slo keys, per-request limits in ms (vLLM's --goodput)
BACKEND = "endpoint"            # the records' backend, bench's configuration name

"""The options of `llmtop attach` (and the server options bench --endpoint would share).

Apart from llmtop/attach.py so that building the command line imports no HTTP client: every
`llmtop` start builds the whole parser.
"""

from __future__ import annotations

import argparse

from llmtop.engine.endpoint import APIS
from llmtop.settings import DEFAULT_PROMPT

DEFAULT_KEY_ENV = "LLMTOP_API_KEY"
DEFAULT_TIMEOUT_S = 120.0


def add_attach_options(p: argparse.ArgumentParser) -> None:
    """The options of `llmtop attach`; bench shares the connection ones (`add_endpoint_options`)."""
    p.add_argument("url", metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--headless", action="store_true",
                   help="no dashboard: the text to stdout, then the metrics table")
    p.add_argument("--json", metavar="FILE", help="write the run record (every chunk's stamp) here")
    add_endpoint_options(p)
    r = p.add_argument_group("request")
    r.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text")
    r.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message (/v1/chat/completions)")
    r.add_argument("--batch", type=int, default=1,
                   help="concurrent streamed requests (default 1), as vLLM's --max-concurrency")
    r.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    r.add_argument("--ignore-eos", action="store_true",
                   help="ask the server to always generate max-new-tokens (vLLM, SGLang)")
    r.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    r.add_argument("--temperature", type=float, default=0.7)
    r.add_argument("--top-p", type=float, default=0.9)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--slo", metavar="ttft=MS,tpot=MS",
                   help="goodput: requests within these per-request limits (ttft, tpot, e2el ms)")


def add_endpoint_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--api", choices=APIS, default=None,
                   help="openai (/v1/completions, /v1/chat/completions) or tgi (/generate_stream);"
                        " default: detected from the server (TGI's /info, else /v1/models)")
    g.add_argument("--served-model", default=None, metavar="NAME",
                   help="the model name to ask the server for (default: the first it lists)")
    g.add_argument("--allow-remote", action="store_true",
                   help="allow a URL outside loopback (127.0.0.0/8, ::1, localhost)")
    g.add_argument("--api-key-env", default=DEFAULT_KEY_ENV, metavar="VAR",
                   help=f"environment variable holding the API key (default {DEFAULT_KEY_ENV})")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds to wait for the next streamed event (default {DEFAULT_TIMEOUT_S:.0f})")

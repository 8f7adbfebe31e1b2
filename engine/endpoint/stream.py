"""Talking to a running server: which API it speaks, streamed requests stamped on arrival.

Two APIs: the OpenAI-compatible `/v1/completions` and `/v1/chat/completions` with
`stream: true` (vLLM, SGLang, TGI's Messages API, llama.cpp's server, `transformers serve`) and
TGI's native `/generate_stream`. httpx does the HTTP and httpx-sse the event stream; each event
is stamped with perf_counter_ns the moment it is decoded, so a stamp includes the network and
the server's own streaming interval, never less.

A chunk that carries several tokens stays one chunk with its count (when the server says it):
the record builder (engine/endpoint/build.py) marks it, it never spreads it into invented
per-token times. Every fault is an EndpointError with a one-line message; what arrived before
it stays in the Trace.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx
from httpx_sse import SSEError, aconnect_sse

from llmtop.engine.endpoint import APIS


class EndpointError(Exception):
    """A fault of the server or the connection, said in one line.

    kind: unreachable, http (4xx/5xx with the server's message), wrong_path, not_streaming,
    cut (the stream ended before the server said it was done), died (the connection broke
    mid-stream), stalled (no event within the timeout), server (an error event in the stream),
    protocol (a reply this client cannot read), bad_request (a request this API cannot carry).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Server:
    url: str                 # base URL: scheme, host, port and any path prefix; no credentials
    api: str                 # openai | tgi
    kind: str                # vllm, sglang, tgi, llama.cpp, transformers, openai-compatible
    model: str
    info: dict[str, Any] = field(default_factory=dict)   # what the server says of itself


@dataclass
class Request:
    prompt: str
    max_new_tokens: int = 64
    chat: bool = False
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    ignore_eos: bool = False


@dataclass
class Chunk:
    t_ns: int                 # perf_counter_ns when the event was decoded here
    text: str
    tokens: int | None        # tokens it carries, as the server counted them; None: not said
    ids: list[int] = field(default_factory=list)   # token ids, where the server sends them


@dataclass
class Trace:
    """One streamed request as it arrived."""

    start_ns: int
    chunks: list[Chunk] = field(default_factory=list)
    usage_tokens: int | None = None    # the server's completion-token count (usage, details)
    prompt_tokens: int | None = None
    finish: str = ""                   # the server's finish reason; "" if it never said
    error: EndpointError | None = None
    _continuous: bool = False          # the server counts usage in every chunk
    _cumulative: int = 0               # continuous usage: tokens counted so far


def base_url(url: str) -> str:
    """The server's base URL: no credentials, query or fragment, no trailing /v1."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError("bad_request", f"not an http(s) URL: {url!r}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def open_client(api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    """One client for a session: TLS verification on, the key only in a request header."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(headers=headers, verify=True, follow_redirects=False,
                             timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def server_message(body: bytes) -> str:
    """The message in an error reply: FastAPI's detail, OpenAI's error.message, TGI's error."""
    try:
        data = json.loads(body)
    except ValueError:
        return one_line(body.decode(errors="replace")) or "(empty reply)"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            err = err.get("message") or err
        for value in (err, data.get("detail"), data.get("message")):
            if value:
                return one_line(value if isinstance(value, str) else json.dumps(value))
    return one_line(json.dumps(data))


async def _get_json(client: httpx.AsyncClient, url: str) -> tuple[int, Any]:
    where = urlunsplit(urlsplit(url)[:2] + ("", "", ""))
    try:
        resp = await client.get(url)
    except httpx.ConnectError as e:
        raise EndpointError("unreachable", f"cannot connect to {where}: {one_line(e) or 'refused'}") from e
    except httpx.TimeoutException as e:
        raise EndpointError("unreachable", f"no answer from {where} in time") from e
    except httpx.HTTPError as e:
        raise EndpointError("unreachable", f"{where}: {one_line(e)}") from e
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def _kind_of(owned_by: str) -> str:
    owner = owned_by.lower()
    for name, kind in (("vllm", "vllm"), ("sglang", "sglang"), ("llamacpp", "llama.cpp"),
                       ("tgi", "tgi")):
        if name in owner:
            return kind
    return "openai-compatible"


async def detect(client: httpx.AsyncClient, url: str, api: str | None = None,
                 model: str | None = None) -> Server:
    """Which API the server at `url` speaks (TGI's /info, else /v1/models), and its model."""
    base = base_url(url)
    if api not in (None, *APIS):
        raise EndpointError("bad_request", f"--api must be one of {', '.join(APIS)}, not {api!r}")
    if api in (None, "tgi"):
        status, info = await _get_json(client, base + "/info")
        if status == 200 and isinstance(info, dict) and "model_id" in info:
            return Server(base, api or "tgi", "tgi", model or info["model_id"], info)
        if api == "tgi":
            raise EndpointError("wrong_path", f"no TGI /info at {base} (HTTP {status})")
    status, models = await _get_json(client, base + "/v1/models")
    if status in (401, 403):
        raise EndpointError("http", f"HTTP {status} from {base}/v1/models: the server wants an "
                                    f"API key (set the variable --api-key-env names)")
    data = models.get("data") if isinstance(models, dict) else None
    if status != 200 or not isinstance(data, list):
        raise EndpointError("wrong_path", f"no OpenAI-compatible /v1/models nor TGI /info at "
                                          f"{base} (HTTP {status}); is the URL the server's base?")
    if not data and not model:
        raise EndpointError("protocol", f"{base}/v1/models lists no model; name one with --model")
    entry = next((m for m in data if m.get("id") == model), data[0] if data else {})
    owned = str(entry.get("owned_by", ""))
    kind = _kind_of(owned)
    if kind == "openai-compatible" and owned == "local" and "status" in entry:
        kind = "transformers"   # `transformers serve` lists a local folder as owned_by "local"
    return Server(base, "openai", kind, model or entry.get("id", ""), dict(entry))


def request_body(server: Server, req: Request) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of one streamed request (greedy unless `req.sample`)."""
    if server.api == "tgi":
        if req.ignore_eos:
            raise EndpointError("bad_request", "TGI's /generate_stream has no ignore_eos; "
                                               "use --api openai or drop --ignore-eos")
        params: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "details": True,
                                  "do_sample": req.sample}
        if req.sample:
            params.update(temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        return "/generate_stream", {"inputs": req.prompt, "parameters": params}
    usage: dict[str, Any] = {"include_usage": True}
    if server.kind in ("vllm", "sglang"):
        usage["continuous_usage_stats"] = True   # a count in every chunk: exact tokens per chunk
    body: dict[str, Any] = {"model": server.model, "max_tokens": req.max_new_tokens,
                            "stream": True, "stream_options": usage}
    if req.sample:
        body.update(temperature=req.temperature, top_p=req.top_p, seed=req.seed)
    else:
        body["temperature"] = 0.0
    if req.ignore_eos:
        body["ignore_eos"] = True
    if req.chat:
        body["messages"] = [{"role": "user", "content": req.prompt}]
        return "/v1/chat/completions", body
    body["prompt"] = req.prompt
    return "/v1/completions", body


def _openai_event(data: Any, t_ns: int, trace: Trace) -> None:
    """Adds one OpenAI stream chunk to `trace`.

    A usage count in a chunk that carries text means the server counts continuously (vLLM's
    continuous_usage_stats): each chunk's tokens are the count's increase. Otherwise usage
    comes once, at the end, and is only the total.
    """
    choices = data.get("choices") or []
    usage = data.get("usage") or None
    text, tokens = "", None
    if choices:
        c = choices[0]
        text = (c.get("text") if "text" in c else (c.get("delta") or {}).get("content")) or ""
        logprobs = c.get("logprobs") or {}
        per_token = logprobs.get("content") or logprobs.get("tokens")
        if per_token:
            tokens = len(per_token)
        if c.get("finish_reason"):
            trace.finish = str(c["finish_reason"])
    if usage and usage.get("completion_tokens") is not None:
        count = int(usage["completion_tokens"])
        trace._continuous = trace._continuous or bool(text)
        if trace._continuous:
            tokens, trace._cumulative = count - trace._cumulative, count
        trace.usage_tokens = count
        if usage.get("prompt_tokens") is not None:
            trace.prompt_tokens = int(usage["prompt_tokens"])
    if text or tokens:
        trace.chunks.append(Chunk(t_ns, text, tokens))


def _tgi_event(data: Any, t_ns: int, trace: Trace) -> None:
    token = data.get("token") or {}
    if "id" in token:
        text = "" if token.get("special") else str(token.get("text", ""))
        trace.chunks.append(Chunk(t_ns, text, 1, [int(token["id"])]))
    if data.get("generated_text") is None:
        return
    details = data.get("details") or {}
    trace.finish = str(details.get("finish_reason") or "done")   # the last event has the text
    if details.get("generated_tokens") is not None:
        trace.usage_tokens = int(details["generated_tokens"])


async def stream(client: httpx.AsyncClient, server: Server, req: Request, trace: Trace,
                 on_chunk: Callable[[Chunk], None] | None = None) -> Trace:
    """One streamed request into `trace` (the caller's, so a cancelled run keeps what arrived);
    never raises a fault: it ends up in `Trace.error`."""
    path, body = request_body(server, req)
    url = server.url + path
    trace.start_ns = time.perf_counter_ns()
    parse = _tgi_event if server.api == "tgi" else _openai_event
    done = False
    try:
        async with aconnect_sse(client, "POST", url, json=body) as source:
            resp = source.response
            if resp.status_code >= 400:
                message = server_message(await resp.aread())
                kind = "wrong_path" if resp.status_code in (404, 405) else "http"
                raise EndpointError(kind, f"HTTP {resp.status_code} from {path}: {message}")
            async for sse in source.aiter_sse():
                t_ns = time.perf_counter_ns()
                if sse.data == "[DONE]":
                    done = True
                    break
                if not sse.data:
                    continue
                try:
                    data = json.loads(sse.data)
                except ValueError as e:
                    raise EndpointError("protocol", f"{path} sent an event that is not JSON: "
                                                    f"{one_line(sse.data, 80)}") from e
                if not isinstance(data, dict):
                    raise EndpointError("protocol", f"{path} sent {one_line(sse.data, 80)}")
                if data.get("error"):
                    raise EndpointError("server", f"the server's stream reported an error after "
                                                  f"{len(trace.chunks)} chunks: "
                                                  f"{server_message(sse.data.encode())}")
                before = len(trace.chunks)
                parse(data, t_ns, trace)
                if on_chunk is not None and len(trace.chunks) > before:
                    on_chunk(trace.chunks[-1])
        if not done and not trace.finish:
            raise EndpointError("cut", f"the stream from {path} ended after {len(trace.chunks)} "
                                       f"chunks without the server saying it was done")
    except EndpointError as e:
        trace.error = e
    except SSEError:
        trace.error = EndpointError("not_streaming", f"{path} answered without a stream "
                                                     f"(not text/event-stream): does it stream?")
    except httpx.ConnectError as e:
        trace.error = EndpointError("unreachable", f"cannot connect to {url}: {one_line(e) or 'refused'}")
    except httpx.TimeoutException:
        trace.error = EndpointError("stalled", f"no event from {path} within the timeout, after "
                                               f"{len(trace.chunks)} chunks")
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:
        trace.error = EndpointError("died", f"the server closed the connection after "
                                            f"{len(trace.chunks)} chunks: {one_line(e) or 'reset'}")
    except httpx.HTTPError as e:
        trace.error = EndpointError("died", f"{path}: {one_line(e)}")
    return trace


async def stream_many(client: httpx.AsyncClient, server: Server, req: Request,
                      traces: list[Trace],
                      on_chunk: Callable[[int, Chunk], None] | None = None) -> list[Trace]:
    """One request per trace in `traces`, all at once (a concurrency level of vLLM's benchmark).

    Cancelled (Ctrl-C), each unfinished trace keeps its chunks and says it was stopped.
    """
    def relay(i: int) -> Callable[[Chunk], None] | None:
        return None if on_chunk is None else (lambda chunk: on_chunk(i, chunk))

    try:
        await asyncio.gather(*(stream(client, server, req, t, relay(i)) for i, t in enumerate(traces)))
    finally:
        for t in traces:
            if t.error is None and not t.finish:
                t.error = EndpointError("stopped", f"stopped after {len(t.chunks)} chunks")
    return traces

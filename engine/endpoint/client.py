"""EndpointClient: a running inference server behind the interface of EngineClient, so the
dashboard drives `llmtop attach URL` as it drives llmtop's own engine. Imports no torch.

The commands mean what they can mean for a server llmtop did not start: Configure checks the
server is there (detect) and reports it as the model and device, with every optimization
unavailable (the server's configuration was set when it was launched); Generate streams the
request(s) (engine/endpoint/stream.py) and reports them as the engine does (RunStarted, a
Token per token of request 0 as the chunks arrive, RunDone with the endpoint record of
engine/endpoint/build.py, Status ready); Stop cancels the stream, whose tokens so far still
make a record. The server's /metrics readings arrive as ServerMetrics events meanwhile.

All HTTP runs on one asyncio loop in a background thread; events go to `on_event` from there.
There is no process: `pid` is None and closing ends the thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from llmtop.engine import catalogue
from llmtop.engine.endpoint import BACKEND, build, prom
from llmtop.engine.endpoint.stream import (Chunk, EndpointError, Request, Server, Trace, detect,
                                           one_line, open_client, request_body, stream_many)
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, Error, ErrorKind,
                                    Generate, ModelInfo, RunDone, RunStarted, ServerMetrics,
                                    Shutdown, Status, Stop, Token)

FIXED = "set when the server was launched"   # why no option can be chosen here
METRICS_INTERVAL_S = 0.5
# the stream's faults as the dashboard reads them: a request the server refuses fails the same
# way again (bad_request pauses the loop); a stream that breaks keeps its tokens (runtime)
RUNTIME_FAULTS = ("cut", "died", "stalled", "unreachable")


def error_kind(e: EndpointError) -> ErrorKind:
    return ErrorKind.RUNTIME if e.kind in RUNTIME_FAULTS else ErrorKind.BAD_REQUEST


def unavailable_options() -> dict[str, dict[str, dict[str, Any]]]:
    """Every catalogue option, none of them ours to choose on someone else's server."""
    return {axis: {name: {"ok": False, "reason": FIXED} for name in names}
            for axis, names in catalogue.AXES.items()}


def request_of(g: Generate) -> Request:
    """The streamed request a Generate asks for (EndpointError when a server cannot carry it)."""
    if g.prompt_len:
        raise EndpointError("bad_request", "a prompt of a given token length needs llmtop's "
                                           "engine: give the server a text prompt")
    chat = bool(g.messages)
    prompt = g.messages[-1].get("content", "") if g.messages else (g.prompt or "")
    return Request(prompt=prompt, max_new_tokens=g.max_new_tokens, chat=chat, sample=g.sample,
                   temperature=g.temperature, top_p=g.top_p, seed=g.seed, ignore_eos=g.ignore_eos)


class EndpointClient:
    def __init__(self, server: Server, api_key: str | None = None, timeout_s: float = 120.0,
                 on_event: Callable[[Any], None] | None = None) -> None:
        """`server`: what attach.connect detected (its URL already past the loopback rule);
        `api_key` goes in a request header only."""
        self.server = server
        self.on_event = on_event
        self._key = api_key
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: Any = None
        self._ready = threading.Event()
        self._run: asyncio.Task | None = None        # the Generate being served
        self._streams: asyncio.Task | None = None    # its requests (Stop cancels them)
        self._stop_asked = False                      # Stop came before the requests left

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return None   # the server is not our process

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="endpoint-client", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, command: Any) -> None:
        """Hands a command to the loop; a closed client turns it into an error event."""
        loop = self._loop
        if loop is None or not self.alive() or loop.is_closed():
            self._emit(Error(ErrorKind.ENGINE_DEAD, "the attach client is closed"))
            return
        loop.call_soon_threadsafe(self._dispatch, command)

    def close(self, timeout: float = 3.0) -> None:
        """Cancels what is in flight, closes the HTTP client and ends the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        self._thread.join(timeout)
        self._thread = None

    # ---- the loop's thread ------------------------------------------------------------------

    def _emit(self, event: Any) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._http = open_client(self._key, self._timeout_s)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._run is not None:
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
        await self._http.aclose()
        asyncio.get_running_loop().stop()

    def _dispatch(self, command: Any) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(command, (Stop, Shutdown)):
            if self._streams is not None:
                self._streams.cancel()
            elif self._run is not None and not self._run.done():
                self._stop_asked = True
            else:   # nothing in flight: say so, or an owner waiting for idle waits forever
                self._emit(Status("ready", "nothing to stop"))
        elif isinstance(command, Configure):
            loop.create_task(self._configure())
        elif isinstance(command, Generate):
            self._stop_asked = False
            self._run = loop.create_task(self._generate(command))

    async def _configure(self) -> None:
        """Detects the server again (it may have gone, or changed model) and reports it."""
        t0 = time.perf_counter()
        self._emit(Status("loading", f"connecting to {self.server.url}"))
        try:
            s = await detect(self._http, self.server.url, self.server.api, self.server.model)
        except EndpointError as e:
            self._emit(Error(ErrorKind.CONFIG, one_line(str(e))))
            self._emit(Status("error", one_line(str(e))))
            return
        self.server = s
        self._emit(ModelInfo(name=s.model, params=0, weight_bytes=0, layers=0, heads=0,
                             kv_heads=0, hidden=0, vocab=0, dtype="", device=BACKEND,
                             synthetic=False, source=s.url))
        self._emit(DeviceInfo(BACKEND, f"{s.kind} server, {s.api} API", 0.0, 0.0,
                              unavailable_options()))
        reading = await prom.read(self._http, s.url)
        if reading is not None:
            self._emit(ServerMetrics(time.perf_counter_ns(), reading))
        self._emit(ConfigApplied(Configure(model=s.model, device=BACKEND, dtype="",
                                           opts={"backend": BACKEND}),
                                 "attached", time.perf_counter() - t0))
        self._emit(Status("ready", f"attached to {s.kind} at {s.url}"))

    async def _generate(self, g: Generate) -> None:
        try:
            req = request_of(g)
            request_body(self.server, req)   # a request this API cannot carry: nothing is sent
        except EndpointError as e:
            self._emit(Error(ErrorKind.BAD_REQUEST, one_line(str(e))))
            self._emit(Status("ready", "request refused"))
            return
        if g.profile_steps:
            self._emit(Error(ErrorKind.CONFIG, "a step profile needs llmtop's engine: the "
                                               "server's kernels are not visible from here"))
        traces = [Trace(start_ns=time.perf_counter_ns()) for _ in range(max(1, g.batch))]
        self._emit(RunStarted(g.run_id, [req.prompt] * len(traces), 0, len(traces),
                              req.max_new_tokens, traces[0].start_ns))
        self._emit(Status("generating", f"run {g.run_id}"))
        readings: list[dict[str, Any]] = []
        poller = asyncio.create_task(prom.poll(
            self._http, self.server.url, METRICS_INTERVAL_S, readings,
            lambda r: self._emit(ServerMetrics(r["t_ns"], {k: v for k, v in r.items() if k != "t_ns"}))))
        index = 0

        def on_chunk(i: int, chunk: Chunk) -> None:
            """Request 0's tokens, as the record builder counts them: a chunk of k tokens is
            k tokens with its one stamp, its text on the first."""
            nonlocal index
            if i != 0:
                return
            for j in range(chunk.tokens if chunk.tokens is not None else 1):
                ids = [chunk.ids[j]] if j < len(chunk.ids) else []
                self._emit(Token(g.run_id, index, ids, [chunk.text if j == 0 else ""], chunk.t_ns))
                index += 1

        self._streams = asyncio.create_task(stream_many(self._http, self.server, req, traces, on_chunk))
        if self._stop_asked:
            self._streams.cancel()
        try:
            await self._streams
        except asyncio.CancelledError:   # Stop: what arrived makes the record
            pass
        finally:
            self._streams = None
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        rec = build.build(self.server, req, traces, None, readings)
        if rec is not None:
            self._emit(RunDone(g.run_id, rec))
        faults = [t.error for t in traces if t.error is not None and t.error.kind != "stopped"]
        if faults:
            more = f" (and {len(faults) - 1} more requests failed)" if len(faults) > 1 else ""
            self._emit(Error(error_kind(faults[0]), one_line(str(faults[0])) + more))
        self._emit(Status("ready", "stopped" if rec and rec.get("stopped") == "stop" else ""))

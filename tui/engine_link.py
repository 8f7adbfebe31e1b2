"""The App's engine side: starting, adopting, restarting and closing the engine process,
replaying a recorded session, and passing each engine event to the model (recorded and traced
on the way). A mixin of LlmtopApp, so app.py stays the composition."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from textual import work

from llmtop.engine.protocol import Status, Stop

from .messages import EngineEventMessage, EngineStarted


QUIT_WAIT_S = 0.3   # how long quitting waits for the engine to exit on its own
HAND_BACK_WAIT_S = 10   # how long an adopted engine may take to end what was in flight


class EngineLink:
    def _launch_engine(self) -> None:
        self._owns_client = True     # an engine we start is ours to close, adopted one or not
        self.generation += 1
        self.model.engine_starting()
        self._start_engine_thread(self.generation)

    @work(thread=True, exclusive=True, group="engine")
    def _start_engine_thread(self, generation: int) -> None:
        from llmtop.engine.client import EngineClient

        with self._engine_lock:
            old, self.client = self.client, None
            if old is not None:
                old.close()
            if self._closing:
                return
            try:
                client = EngineClient(on_event=lambda ev: self.post_message(EngineEventMessage(ev, generation)),
                                      threads=self.engine_threads, ui_attached=True)
                client.start()
            except Exception as e:  # spawning can fail (no memory, no fds)
                self.post_message(EngineStarted(None, generation, f"{type(e).__name__}: {e}"))
                return
            self.client = client
        self.post_message(EngineStarted(client.pid, generation))

    def _adopt_client(self, client: Any) -> None:
        """Drives an engine someone else started (its owner closes it)."""
        self.generation += 1
        gen = self.generation
        client.on_event = lambda ev: self.post_message(EngineEventMessage(ev, gen))
        self._owns_client = False
        self._watch_pid(client.pid)
        self.model.engine_adopted(client.alive())

    def on_engine_started(self, msg: EngineStarted) -> None:
        if msg.generation != self.generation:
            return
        if msg.error:
            self.model.set_error(f"the engine could not start: {msg.error}")
            return
        self._trace_event("engine_started", pid=msg.pid)
        self._watch_pid(msg.pid)

    def _watch_pid(self, pid: int | None) -> None:
        if self._sampler is not None:
            self._sampler.watch(pid)
            self._numa_now(pid)

    def action_reconnect(self) -> None:
        """An attached server is not ours to restart: connect to it again."""
        self.notify(f"reconnecting to {self.attached}", timeout=3)
        self.client.send(Stop())   # a run in flight ends; its events are the old link's
        self.model.engine_starting()
        self.model.failed.clear()
        self._adopt_client(self.client)

    def action_restart_engine(self) -> None:
        self.notify("restarting the engine", timeout=3)
        self._launch_engine()

    def on_unmount(self) -> None:
        self._closing = True
        if self.recorder is not None:
            self.recorder.close()
        if self._sampler is not None:
            self._sampler.close()   # closes the backend once, after its last poll
        elif self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                pass
        if not self._owns_client:
            self._hand_back(self.client)
        else:
            with self._engine_lock:
                if self.client is not None:
                    # a quit is instant: the engine gets Shutdown and a moment, then is
                    # terminated (it writes nothing the session needs after the last event)
                    self.client.close(timeout=QUIT_WAIT_S)
                    self.client = None

    def _hand_back(self, client: Any) -> None:
        """An adopted engine goes back to its owner idle: what this app had in flight is
        stopped and its events drained here, so that the owner's next app does not read this
        app's last "ready" as the answer to its own first command."""
        if client is None:
            return
        if self.model.busy and client.alive():
            idle = threading.Event()

            def until_idle(ev: Any) -> None:
                if isinstance(ev, Status) and ev.phase in ("ready", "error"):
                    idle.set()

            client.on_event = until_idle
            client.send(Stop())
            idle.wait(HAND_BACK_WAIT_S)
        client.on_event = None

    def on_engine_event_message(self, msg: EngineEventMessage) -> None:
        if msg.generation != self.generation:
            return  # from an engine we already replaced
        self.handle_event(msg.event)

    @work(thread=True, exclusive=True, group="replay")
    def _play_replay(self) -> None:
        """Plays the recorded engine events at their recorded pace (scaled by --speed)."""
        for delay, message in self.replay.messages():
            if delay > 0:
                time.sleep(delay)
            if isinstance(message, dict):  # the session's own lines: config, telemetry, end
                kind = message.get("type", "")
                if kind in ("ReplayStopped", "ReplayEnd"):
                    text = message.get("problem") or message.get("message") or "replay finished"
                    self.call_from_thread(self.notify, str(text), timeout=10,
                                          severity="warning" if kind == "ReplayStopped" else "information")
                continue
            self.call_from_thread(self.handle_event, message)

    def handle_event(self, ev: Any) -> None:
        """One engine event: recorded, traced, then the model's (tests feed fixed events here)."""
        if self.recorder is not None:
            self.recorder.event(ev)
        if self._trace:
            self._trace_engine_event(ev)
        self.model.handle(ev)

    # ---- tracing (benchmarks/dashboard_overhead.py reads this) ----------------------------------

    def _trace_engine_event(self, ev: Any) -> None:
        name = type(ev).__name__
        if name == "Token" and not self._first_token_traced:
            self._first_token_traced = True
            self._trace_event("first_token")
        elif name == "RunDone":
            mt = ev.record.get("metrics", {})
            self._trace_event("run_done", run_id=ev.run_id, tpot_ms=mt.get("tpot_ms"),
                              ttft_ms=mt.get("ttft_ms"), n_tokens=mt.get("n_tokens"),
                              opts=(ev.record.get("config") or {}).get("opts"))
        elif name == "ConfigApplied":
            self._trace_event("config_applied", how=ev.how, seconds=ev.seconds)

    def _trace_event(self, event: str, **fields: Any) -> None:
        if not self._trace:
            return
        line = {"event": event, "t": time.time(), "perf_ns": time.perf_counter_ns(), **fields}
        try:
            with open(self._trace, "a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError:
            pass

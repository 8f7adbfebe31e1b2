"""LlmtopApp: the dashboard. Thin: it wires engine events and telemetry into the Session and
tells panels that their data changed; the panels draw themselves.

Threads: the EngineClient's reader thread and the telemetry sampler post messages (post_message
is thread-safe); blocking work (starting or closing the engine, saving) runs in thread workers.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from llmtop.engine import catalogue
from llmtop.engine.client import needs_fresh_engine
from llmtop.engine.session_log import SessionWriter
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, Error, Generate,
                             ModelInfo, RunDone, RunStarted, Status, Stop, Token)

from . import theming
from .messages import (EngineEventMessage, EngineStarted, NumaUpdate, SessionSaved, TelemetryReady,
                       TelemetryTick)
from .screens.help import HelpScreen
from .screens.profile import ProfileScreen
from .state import PROMPT_SET, Marker, Session, Telemetry
from .widgets.comparison import ComparisonTable
from .widgets.gpu_panel import GpuPanel
from .widgets.header import LlmtopHeader
from .widgets.host_panel import HostPanel
from .widgets.latency_plot import LatencyPlot
from .widgets.metrics import MetricsPanel
from .widgets.numa_panel import NumaPanel
from .widgets.optimizations import OptimizationsPanel
from .widgets.run_settings import RunSettings, RunSettingsPanel
from .widgets.token_stream import TokenStream
from .widgets.tp_control import TpControl, tp_choices

DEFAULT_PROMPT = PROMPT_SET[0]
# errors after which the loop pauses: running the same request again would fail the same way
TABS = ("optimize", "run", "gpu", "host", "numa")
# Side by side the left column needs ~60 columns (plot axes, readable text) and the right the
# metrics table's width (label and two value columns with their headers: 64, app.tcss' #right
# min-width); below their sum the panels stack in one column.
STACK_BELOW = 60 + 64
CHROME_ROWS = 3      # header (2) and footer (1) around the body
TABS_MIN_ROWS = 12   # stacked: the tab bar and enough of a panel to use it


def _start_resource_tracker() -> None:
    """multiprocessing's spawn passes sys.stderr's fd to its resource tracker; under Textual
    stderr is a capture object without a real fd ('bad value(s) in fds_to_keep'), so the
    tracker must be running before the app takes the terminal."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:
        pass


class LlmtopApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "llmtop"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("q", "quit", "Quit", tooltip="quit: closes the engine, no process is left behind"),
        Binding("space", "toggle_pause", "Pause", tooltip="pause / resume the run loop (the current run finishes)"),
        Binding("s", "stop_run", "Stop", tooltip="stop the current run now and pause"),
        Binding("c", "clear_history", "Clear", tooltip="clear the history: tokens, plot, comparison"),
        Binding("ctrl+s", "save_session", "Save", tooltip="save the session (every run record, the comparison) as JSON"),
        Binding("ctrl+r", "restart_engine", "Restart engine", tooltip="restart the engine process (after a crash, or any time)"),
        Binding("b", "baseline", "Baseline", tooltip="make the current configuration the comparison's baseline"),
        Binding("f", "profile", "Profile", tooltip="capture a step profile in the next run: top kernels, busy/idle split"),
        Binding("t", "next_theme", "Theme", tooltip="next theme (llmtop-dark, light, high-contrast, rocm, yours)"),
        Binding("o", "show_tab('optimize')", "Optimize", show=False, tooltip="show the optimizations"),
        Binding("r", "show_tab('run')", "Run", show=False, tooltip="show the run settings (prompt, batch, tokens, sampling)"),
        Binding("g", "show_tab('gpu')", "GPU", show=False, tooltip="show the GPU panel"),
        Binding("h", "show_tab('host')", "Host", show=False, tooltip="show the host panel (CPU cores, memory)"),
        Binding("n", "show_tab('numa')", "NUMA", show=False, tooltip="show the NUMA panel"),
        Binding("question_mark,f1", "help", "Help", tooltip="this help"),
        Binding("ctrl+down", "scroll_body(1)", "Scroll down", show=False,
                tooltip="narrow terminals (panels stacked): scroll the panels down a page"),
        Binding("ctrl+up", "scroll_body(-1)", "Scroll up", show=False,
                tooltip="narrow terminals (panels stacked): scroll the panels up a page"),
    ]

    def __init__(self, configure: Configure | None = None, request: Generate | None = None,
                 theme_name: str | None = None, *, start_engine: bool = True, telemetry: bool = True,
                 client: Any = None, session_dir: str | Path | None = None,
                 telemetry_hz: float = 4.0, record: str | Path | None = None,
                 replay: Any = None, engine_threads: int | None = None) -> None:
        """`record`: a JSONL session file the engine events are appended to as they arrive.
        `replay`: a session_log.ReplaySource played instead of an engine (llmtop replay).
        `engine_threads`: the engine's CPU threads; None keeps a core for this UI when torch
        would take them all (engine/threads.py says why)."""
        super().__init__()
        self.engine_threads = engine_threads
        self.replay = replay
        if replay is not None:
            start_engine = telemetry = False
        self.recorder = SessionWriter(record) if record and replay is None else None
        configure = configure or Configure()
        self.desired = Configure(configure.model, configure.device, configure.dtype,
                                 {**catalogue.DEFAULTS, **configure.opts, "dtype": configure.dtype},
                                 configure.tp, configure.gpus)
        self.settings = RunSettings.from_request(request or Generate(prompt=DEFAULT_PROMPT),
                                                 DEFAULT_PROMPT)
        self.session = Session()
        self.telemetry = Telemetry()
        self.paused = False
        self.error = ""
        self.start_engine = start_engine
        self.telemetry_on = telemetry
        self.telemetry_hz = telemetry_hz
        self.session_dir = Path(session_dir) if session_dir else Path.cwd()
        self.client = client           # an EngineClient; adopted if given (tests share one)
        self.generation = 0            # bumped per engine instance; stale events are dropped
        self.engine_up = client is not None and client.alive()
        self.busy = False              # a Configure or Generate is in flight
        self.inflight: Generate | Configure | None = None
        self.run_id = 0
        self.prompt_index = 0
        self.profile_pending = 0       # decode steps to profile in the next run
        self.profiles: list[Any] = []
        self._engine_lock = threading.Lock()
        self._closing = False
        self._owns_client = client is None
        self._sampler = None
        self._backend = None
        self._trace = os.environ.get("LLMTOP_TRACE") or None
        self._first_token_traced = False
        self._theme_problems: list[str] = []
        self._drawn = False
        self._widgets: dict[type, list] = {}
        self._setup_themes(theme_name)
        if start_engine and client is None:
            _start_resource_tracker()

    # ---- themes ---------------------------------------------------------------------------

    def _setup_themes(self, theme_name: str | None) -> None:
        self.llmtop_themes = theming.builtin_themes()
        mine, self._theme_problems = theming.user_themes()
        self.llmtop_themes.update(mine)
        for theme in self.llmtop_themes.values():
            self.register_theme(theme)
        try:
            name, extra = theming.resolve(theme_name, self.llmtop_themes)
        except theming.ThemeError as e:
            self._theme_problems.append(str(e))
            name, extra = theming.DEFAULT_THEME, None
        if extra is not None:
            self.llmtop_themes[extra.name] = extra
            self.register_theme(extra)
        self.theme = name

    def action_next_theme(self) -> None:
        names = list(self.llmtop_themes)
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme {self.theme}", timeout=2)

    def watch_theme(self, theme: str) -> None:
        if self._drawn:
            self.redraw_all()

    # ---- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield LlmtopHeader(id="header")
        yield Static(id="error-bar")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield TokenStream(id="tokens")
                # the metrics right under the tokens when the panels stack (narrow terminals)
                yield MetricsPanel(id="metrics-stacked")
                yield LatencyPlot(id="plot")
                yield ComparisonTable(id="comparison")
            with Vertical(id="right"):
                yield MetricsPanel(id="metrics")
                with TabbedContent(id="tabs", initial="optimize"):
                    with TabPane("Optimize o", id="optimize"):
                        yield OptimizationsPanel(id="optimizations")
                    with TabPane("Run r", id="run"):
                        yield RunSettingsPanel(id="run-settings")
                    with TabPane("GPU g", id="gpu"):
                        with VerticalScroll(classes="panel-scroll"):
                            yield GpuPanel(id="gpu-panel")
                    with TabPane("Host h", id="host"):
                        with VerticalScroll(classes="panel-scroll"):
                            yield HostPanel(id="host-panel")
                    with TabPane("NUMA n", id="numa"):
                        with VerticalScroll(classes="panel-scroll"):
                            yield NumaPanel(id="numa-panel")
        yield Footer()

    def on_mount(self) -> None:
        for problem in self._theme_problems:
            self.notify(problem, severity="warning", timeout=8)
        self._drawn = True
        self._fit_layout()
        self.redraw_all()
        self.call_after_refresh(self._after_first_frame)

    def _after_first_frame(self) -> None:
        """Starts the engine and the sampler once the first frame is out, so neither the spawn
        nor NVML's start-up competes with it for the GIL (launch -> first frame, docs)."""
        self._trace_event("first_frame")
        if self.telemetry_on:
            self._start_telemetry()
        if self.replay is not None:
            self._play_replay()
        elif self.client is not None:
            self._adopt_client(self.client)
        elif self.start_engine:
            self._launch_engine()

    def on_resize(self, event: events.Resize) -> None:
        if self._drawn:   # before on_mount the panels are not there; on_mount fits them
            self._fit_layout(event.size)   # self.size catches up only after this event

    def _fit_layout(self, size: Size | None = None) -> None:
        """Side by side on wide terminals; below STACK_BELOW columns the panels stack in one
        scrollable column whose first screen is the token stream and the metrics (compact when
        the terminal is short), so nothing is cut off at 80 x 24. Heights a scrolling column
        cannot express as fractions are set here."""
        if not self.screen_stack:
            return
        screen = self.screen_stack[0]
        width, height = size or self.size
        stacked = width < STACK_BELOW
        screen.set_class(stacked, "-stacked")
        body = max(1, height - CHROME_ROWS)
        compact = stacked and MetricsPanel.full_height() > body // 2
        for panel in screen.query(MetricsPanel):
            panel.set_compact(compact)
        tokens = screen.query_one("#tokens", TokenStream)
        tabs = screen.query_one("#tabs", TabbedContent)
        if stacked:
            rows = MetricsPanel.compact_height() if compact else MetricsPanel.full_height()
            tokens.styles.height = max(TokenStream.MIN_ROWS, body - rows)
            tabs.styles.height = max(TABS_MIN_ROWS, body)
            # focusing the comparison or the tabs scrolled the column: tokens first
            self.call_after_refresh(screen.query_one("#body").scroll_home, animate=False)
        else:
            tokens.styles.height = None   # back to the stylesheet's fractions
            tabs.styles.height = None
        if self._drawn:
            self.redraw_all()

    def redraw_all(self) -> None:
        """Every panel from the current data, now (tests call this after feeding events)."""
        for widget in (LlmtopHeader, TokenStream, LatencyPlot, MetricsPanel, ComparisonTable,
                       OptimizationsPanel, TpControl, GpuPanel, HostPanel, NumaPanel):
            for w in self._main_query(widget):
                w.redraw_now()
        self._show_error()

    def _main_query(self, cls: type) -> list:
        """Widgets of the dashboard screen, even while a help or profile screen is on top."""
        return list(self.screen_stack[0].query(cls)) if self.screen_stack else []

    def refresh_header(self) -> None:
        for header in self._main_query(LlmtopHeader):
            header.redraw_now()

    def _changed(self, *widgets: type) -> None:
        """Tells panels their data changed (they redraw at their own pace). Called per token,
        so the widgets are looked up once, not queried from the DOM each time."""
        for cls in widgets:
            found = self._widgets.get(cls)
            if found is None:
                found = self._widgets[cls] = list(self._main_query(cls)) if self._drawn else []
                if not found:
                    del self._widgets[cls]
            for w in found:
                w.changed()

    # ---- engine lifecycle -------------------------------------------------------------------

    def _launch_engine(self) -> None:
        self._owns_client = True     # an engine we start is ours to close, adopted one or not
        self.generation += 1
        self.session.config = None   # a new engine holds no configuration until it is sent one
        self.engine_up = False
        self.busy = True
        self.inflight = None
        self.session.on_status(Status("starting", "starting the engine process"))
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
        self.engine_up = client.alive()
        self.busy = False
        self.session.on_status(Status("ready", "engine adopted"))
        self._watch_pid(client.pid)
        self._next()

    def on_engine_started(self, msg: EngineStarted) -> None:
        if msg.generation != self.generation:
            return
        if msg.error:
            self._set_error(f"the engine could not start: {msg.error}")
            return
        self._trace_event("engine_started", pid=msg.pid)
        self._watch_pid(msg.pid)

    def _watch_pid(self, pid: int | None) -> None:
        if self._sampler is not None:
            self._sampler.watch(pid)
            self._numa_now(pid)

    def action_restart_engine(self) -> None:
        self.error = ""
        self._show_error()
        self.notify("restarting the engine", timeout=3)
        self._launch_engine()
        self.redraw_all()

    def on_unmount(self) -> None:
        self._closing = True
        if self.recorder is not None:
            self.recorder.close()
        if self._sampler is not None:
            self._sampler.close()  # closes the backend, after any running poll, without waiting on it
        elif self._backend is not None:
            try:
                self._backend.close()
            except Exception:
                pass
        if self._owns_client:
            with self._engine_lock:
                if self.client is not None:
                    self.client.close()
                    self.client = None

    @property
    def engine_pid(self) -> int | None:
        return self.client.pid if self.client is not None else None

    # ---- the run loop -----------------------------------------------------------------------

    def _send(self, command: Any) -> None:
        if self.client is None:
            return
        self.busy = True
        self.inflight = command
        self.client.send(command)

    def _config_needed(self) -> bool:
        applied = self.session.config
        return (applied is None or applied.opts != self.desired.opts
                or applied.tp != self.desired.tp)

    def conflict(self) -> str | None:
        return catalogue.conflicts(self.desired.opts)

    def pending_changes(self) -> list[str]:
        config = self.session.config
        if config is None or not config.opts:
            return []
        out = [f"{a}={v}" for a, v in self.desired.opts.items() if config.opts.get(a) != v]
        if config.tp != self.desired.tp:
            out.append(f"tp={self.desired.tp}")
        return out

    def _next(self) -> None:
        """One step of the loop: reconfigure if the user changed options, else the next run."""
        if not self.engine_up or self.busy or self.error or self.client is None or self._closing:
            return
        if self._config_needed() and not self.conflict():
            if needs_fresh_engine(self.session.config, self.desired):
                self.notify("a new tensor-parallel group starts a new engine process", timeout=3)
                self._launch_engine()
                return
            self._send(replace(self.desired, opts=dict(self.desired.opts)))
            return
        if self.session.config is None or self.paused:
            return
        self.run_id += 1
        request = self.settings.request(self.run_id, self.prompt_index)
        self.prompt_index += 1
        if self.profile_pending and hasattr(request, "profile_steps"):
            request.profile_steps, self.profile_pending = self.profile_pending, 0
        self._send(request)

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
        """Applies one engine event (tests feed fixed events here, without an engine)."""
        if self.recorder is not None:
            self.recorder.event(ev)
        s = self.session
        if isinstance(ev, Token):
            if s.on_token(ev):
                if not self._first_token_traced:
                    self._first_token_traced = True
                    self._trace_event("first_token")
                self._changed(TokenStream, LatencyPlot, MetricsPanel)
        elif isinstance(ev, Status):
            s.on_status(ev)
            if ev.phase == "ready":
                self.engine_up = True
                self.busy = False
                self.inflight = None
            elif ev.phase == "error":
                self.busy = False
                self.inflight = None
            self._changed(LlmtopHeader)
            if not s.runs:
                self._changed(TokenStream)
            if ev.phase == "ready":
                self.call_later(self._next)
        elif isinstance(ev, RunStarted):
            req = self.inflight if isinstance(self.inflight, Generate) else None
            s.on_run_started(ev, sample=bool(req and req.sample), prompt_len=req.prompt_len if req else None)
            self._changed(LlmtopHeader, TokenStream, MetricsPanel)
        elif isinstance(ev, RunDone):
            run = s.on_run_done(ev)
            if run is not None:
                mt = ev.record.get("metrics", {})
                self._trace_event("run_done", run_id=ev.run_id, tpot_ms=mt.get("tpot_ms"),
                                  ttft_ms=mt.get("ttft_ms"), n_tokens=mt.get("n_tokens"),
                                  opts=(ev.record.get("config") or {}).get("opts"))
            self._changed(TokenStream, LatencyPlot, MetricsPanel, ComparisonTable, LlmtopHeader)
        elif isinstance(ev, ModelInfo):
            s.on_model(ev)
            self._changed(LlmtopHeader, MetricsPanel, TpControl, GpuPanel)
        elif isinstance(ev, DeviceInfo):
            s.on_device(ev)
            self._changed(OptimizationsPanel, TpControl, MetricsPanel, LlmtopHeader)
        elif isinstance(ev, ConfigApplied):
            s.on_config(ev)
            if not isinstance(self.inflight, Configure):
                # not our request (an adopted engine, a replay): what runs is what we want
                self.desired.opts = dict(ev.config.opts)
                self.desired.dtype = ev.config.dtype
                self.desired.tp = ev.config.tp
                self.desired.gpus = ev.config.gpus
            self.desired.device = ev.config.device
            self._trace_event("config_applied", how=ev.how, seconds=ev.seconds)
            self._changed(LlmtopHeader, OptimizationsPanel, TpControl, LatencyPlot, ComparisonTable)
        elif isinstance(ev, EngineEvent):
            s.on_engine_event(ev)
            self._changed(LatencyPlot)
        elif isinstance(ev, Error):
            self._on_error(ev)
        elif type(ev).__name__ == "StepProfile":
            self.profiles.append(ev)
            busy = f" {100 * ev.busy_ms / ev.step_ms:.0f}% busy" if ev.step_ms else ""
            run = next((r for r in reversed(s.runs) if r.run_id == ev.run_id), None)
            s.markers.append(Marker(run.first_step if run else s.steps, "profile", "profile" + busy))
            self.push_screen(ProfileScreen(ev))
            self._changed(MetricsPanel)
        elif type(ev).__name__ == "GuardResult":
            s.on_guard(ev)
            if ev.status == "diverged":
                self.notify(f"correctness guard: greedy tokens diverge from the baseline "
                            f"({ev.baseline}) at token {ev.diverged_at}", severity="warning", timeout=6)
            self._changed(MetricsPanel, ComparisonTable)

    def _on_error(self, ev: Error) -> None:
        s = self.session
        if ev.kind == "engine_dead":
            self.engine_up = False
            self.busy = False
            self.inflight = None
            s.on_run_error("engine died")
            s.on_status(Status("error", ev.message))
            self._set_error(f"{ev.message}. Press ctrl+r to restart the engine; "
                            "everything measured so far is kept.")
            self._watch_pid(None)
        elif ev.kind == "config":
            applied = s.config.opts if s.config else None
            self.notify(f"configuration rejected: {ev.message}", severity="error", timeout=8)
            if applied:   # back to what runs, so the loop does not retry the same refusal
                self.desired.opts = dict(applied)
                self.desired.dtype = applied.get("dtype", self.desired.dtype)
                self.desired.tp = s.config.tp
                self.desired.gpus = s.config.gpus
            else:
                self._set_error(f"the engine cannot load this configuration: {ev.message}")
            self._changed(OptimizationsPanel, TpControl, LlmtopHeader)
        elif ev.kind == "not_configured":
            s.config = None           # the engine lost its configuration: send it again
            self.busy = False
            self.inflight = None
            self.call_later(self._next)
        elif ev.kind.pausing:
            s.on_run_error(ev.message)
            self.paused = True
            if ev.kind == "internal":
                self._set_error(f"engine error: {ev.message}. Press ctrl+r to restart the engine.")
            else:
                self.notify(f"{ev.kind}: {ev.message} (paused; space resumes)", severity="error",
                            timeout=10)
            self._changed(TokenStream, LlmtopHeader)
        else:
            self.notify(f"{ev.kind}: {ev.message}", severity="warning", timeout=6)

    def _set_error(self, text: str) -> None:
        self.error = text
        self._show_error()
        self._changed(LlmtopHeader)

    def _show_error(self) -> None:
        if not self.screen_stack:
            return
        bar = self.screen_stack[0].query_one("#error-bar", Static)
        bar.update(f"✖ {self.error}" if self.error else "")
        bar.set_class(bool(self.error), "visible")

    # ---- user actions -------------------------------------------------------------------------

    def option_state(self, axis: str, name: str) -> tuple[bool, str]:
        """(can it run here, why not / caveat) from the engine's DeviceInfo."""
        if axis not in catalogue.AXES or name not in catalogue.AXES[axis]:
            return False, f"{axis}={name} is not an option"
        dev = self.session.device
        if dev is None:
            return False, "the engine has not reported this device's options yet"
        info = dev.options.get(axis, {}).get(name, {})
        return bool(info.get("ok")), info.get("reason", "")

    def select_option(self, axis: str, name: str) -> bool:
        """Choose an option for the next run; refused (with the reason shown) if unavailable."""
        ok, reason = self.option_state(axis, name)
        if not ok:
            self.notify(f"{axis}={name} cannot run here: {reason}", severity="warning", timeout=6)
            return False
        self.desired.opts[axis] = name
        if axis == "dtype":
            self.desired.dtype = name
        why = self.conflict()
        if why:
            self.notify(why, severity="warning", timeout=6)
        self._changed(OptimizationsPanel, LlmtopHeader)
        self._next()
        return True

    def select_tp(self, size: int) -> bool:
        """Choose the tensor-parallel size for the next run (a reload, sharded over `size`
        ranks); refused, with the reason shown, where the model's heads or the devices do not
        allow it. A --gpus set of another length is dropped: llmtop then picks the GPUs."""
        choices = {n: (ok, why) for n, ok, why in self.tp_choices()}
        ok, why = choices.get(size, (False, "the engine has not reported the model and device yet"
                                     if not choices else "not a size offered here"))
        if not ok:
            self.notify(f"tp={size} cannot run here: {why}", severity="warning", timeout=6)
            return False
        if size != self.desired.tp:
            self.desired.tp = size
            if self.desired.gpus is not None and len(self.desired.gpus) != size:
                self.desired.gpus = None
            self.notify(f"tp={size} from the next run (the model reloads, split over {size} "
                        f"rank{'s' if size != 1 else ''})", timeout=4)
        self._changed(TpControl, OptimizationsPanel, LlmtopHeader)
        self._next()
        return True

    def tp_choices(self) -> list[tuple[int, bool, str]]:
        """(size, can run, why not) for the model and device the engine reported ([] before)."""
        s = self.session
        if s.model is None or s.device is None:
            return []
        return tp_choices(s.model.heads, s.model.kv_heads, s.device.device,
                          getattr(s.device, "gpu_count", 0))

    def collective_pct(self) -> float | None:
        """The all-reduce share of a decode step from the last step profile taken at the
        current TP size (None before one, or with one rank)."""
        tp = self.session.model.tp if self.session.model else 1
        if tp <= 1:
            return None
        for p in reversed(self.profiles):
            if getattr(p, "tp", 1) == tp:
                return p.collective_pct
        return None

    def action_profile(self, steps: int = 8) -> None:
        if "profile_steps" not in Generate.__dataclass_fields__:
            self.notify("this engine has no step profiler", severity="warning")
            return
        self.profile_pending = steps
        when = "when the loop resumes (space)" if self.paused else "in the next run"
        self.notify(f"profiling the prefill and {steps} decode steps {when}", timeout=4)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.notify("paused: the current run finishes, no new one starts" if self.paused
                    else "resumed", timeout=2)
        self._changed(LlmtopHeader)
        self._next()

    def action_stop_run(self) -> None:
        self.paused = True
        if self.client is not None and isinstance(self.inflight, Generate):
            self.client.send(Stop())
        self._changed(LlmtopHeader)

    def action_clear_history(self) -> None:
        self.session.clear()
        self.notify("history cleared", timeout=2)
        self.redraw_all()

    def action_baseline(self) -> None:
        table = self.screen_stack[0].query_one(ComparisonTable)
        if self.focused is table and table.row_count:
            table.action_baseline()
            return
        run = self.session.current_or_last()
        if run is None or run.key not in self.session.rows:
            self.notify("no finished run of this configuration yet", severity="warning", timeout=3)
            return
        self.set_baseline(run.key)

    def set_baseline(self, key: str) -> None:
        self.session.set_baseline(key)
        row = self.session.rows.get(key)
        if row is not None:
            self.notify(f"baseline: {row.label}", timeout=2)
        self._changed(ComparisonTable)

    def action_show_tab(self, tab: str) -> None:
        tabs = self.screen_stack[0].query_one("#tabs", TabbedContent)
        tabs.active = tab
        if self.screen_stack[0].has_class("-stacked"):  # below the first screen: bring it up
            tabs.scroll_visible(top=True, animate=False)

    def action_scroll_body(self, pages: int) -> None:
        body = self.screen_stack[0].query_one("#body")
        if pages > 0:
            body.scroll_page_down(animate=False)
        else:
            body.scroll_page_up(animate=False)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def help_bindings(self) -> list[Binding]:
        keys = [b for b in self.BINDINGS if isinstance(b, Binding)]
        keys.append(Binding("ctrl+p", "command_palette", "Command palette",
                            tooltip="command palette: every optimization, theme and action by name"))
        return keys

    def action_toggle_sampling(self) -> None:
        self.settings = replace(self.settings, sample=not self.settings.sample)
        self.notify(f"sampling {'on' if self.settings.sample else 'off (greedy)'} from the next run",
                    timeout=3)

    @work(thread=True, group="save")
    def action_save_session(self) -> None:
        data = self.session.export()
        data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        data["settings"] = vars(self.settings).copy()
        path = self.session_dir / f"llmtop-session-{time.strftime('%Y%m%d-%H%M%S')}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1, default=str))
        except OSError as e:
            self.post_message(SessionSaved(str(path), e.strerror or str(e)))
            return
        self.post_message(SessionSaved(str(path)))

    def on_session_saved(self, msg: SessionSaved) -> None:
        if msg.error:
            self.notify(f"could not save {msg.path}: {msg.error}", severity="error")
        else:
            self.notify(f"session saved to {msg.path}", timeout=5)

    # ---- command palette ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for axis, options in catalogue.AXES.items():
            for name in options:
                ok, reason = self.option_state(axis, name)
                help_text = ("apply from the next run" + (f" ({reason})" if reason else "")
                             if ok else f"unavailable: {reason}")
                yield SystemCommand(f"Optimization: {axis} = {name}", help_text,
                                    lambda a=axis, n=name: self.select_option(a, n))
        for preset, opts in catalogue.PRESETS.items():
            yield SystemCommand(f"Preset: {preset}", " ".join(f"{a}={v}" for a, v in opts.items()),
                                lambda p=preset: self.apply_preset(p))
        for binding in self.help_bindings():
            if binding.action in ("command_palette", "help", "quit"):
                continue
            yield SystemCommand(binding.description if binding.action != "next_theme" else "Next theme",
                                binding.tooltip or binding.description,
                                lambda a=binding.action: self.run_action(a))
        yield SystemCommand("Sampling on/off", "toggle sampling (greedy when off) from the next run",
                            self.action_toggle_sampling)
        for n, ok, why in self.tp_choices():
            yield SystemCommand(f"Tensor parallel: tp = {n}",
                                ("apply from the next run (reloads)" + (f": {why}" if why else ""))
                                if ok else f"unavailable: {why}",
                                lambda n=n: self.select_tp(n))
        for name in self.llmtop_themes:
            yield SystemCommand(f"Theme: {name}", "switch theme", lambda n=name: setattr(self, "theme", n))

    def apply_preset(self, preset: str) -> None:
        refused = []
        for axis, name in catalogue.PRESETS[preset].items():
            ok, reason = self.option_state(axis, name)
            if ok:
                self.desired.opts[axis] = name
            else:
                refused.append(f"{axis}={name} ({reason})")
        if refused:
            self.notify("not applied: " + "; ".join(refused), severity="warning", timeout=8)
        self._changed(OptimizationsPanel, LlmtopHeader)
        self._next()

    # ---- telemetry ------------------------------------------------------------------------------

    def gpu_busy_pct(self) -> float | None:
        """The GPU's busy share: the sampler's utilization, else the last GPU step profile's."""
        busy = self.telemetry.gpu_busy_pct()
        if busy is None and self.profiles and self.profiles[-1].device == "gpu" and self.profiles[-1].step_ms:
            busy = 100 * self.profiles[-1].busy_ms / self.profiles[-1].step_ms
        return busy

    @work(thread=True, group="telemetry")
    def _start_telemetry(self) -> None:
        try:
            self._run_telemetry()
        except Exception as e:  # the dashboard never dies of telemetry: one line, the rest runs
            self.post_message(TelemetryReady("none", [], [f"GPU telemetry failed: "
                                                          f"{type(e).__name__}: {e}"], None))

    def _run_telemetry(self) -> None:
        import psutil

        from llmtop.profilers.gpu import detect_backend
        from llmtop.profilers.sampler import Sampler

        backend = detect_backend()
        self._backend = backend
        devices = backend.devices()
        try:
            topology = backend.topology()
        except Exception:
            topology = None
        self.post_message(TelemetryReady(backend.name, devices, list(getattr(backend, "reasons", [])),
                                         topology))
        me = psutil.Process()
        me.cpu_percent(None)
        counter = [0]

        def on_tick(tick: Any) -> None:
            counter[0] += 1
            self.post_message(TelemetryTick(tick, me.cpu_percent(None), sampler.cost()))
            if counter[0] % 20 == 0:
                self._numa_now(self.engine_pid)

        sampler = Sampler(backend, hz=self.telemetry_hz, pid=self.engine_pid, on_tick=on_tick)
        if self._closing:
            return
        self._sampler = sampler
        sampler.start()
        self._numa_now(self.engine_pid)

    def _numa_now(self, pid: int | None) -> None:
        """Reads the NUMA state (procfs/sysfs, ~1 ms); called from worker threads."""
        from llmtop.profilers.numa import numa_status

        try:
            status = numa_status(self.telemetry.devices, pid)
        except Exception as e:  # never let a sysfs surprise kill the sampler thread
            self.log.warning(f"numa_status failed: {e}")
            return
        self.post_message(NumaUpdate(status))

    def on_telemetry_ready(self, msg: TelemetryReady) -> None:
        t = self.telemetry
        t.backend, t.devices, t.reasons, t.topology = msg.backend, msg.devices, msg.reasons, msg.topology
        self._changed(GpuPanel)

    def on_telemetry_tick(self, msg: TelemetryTick) -> None:
        self.telemetry.add_tick(msg.tick, msg.ui_cpu_pct, msg.cost)
        self._changed(GpuPanel, HostPanel)
        if msg.tick.gpus:
            self._changed(MetricsPanel)

    def on_numa_update(self, msg: NumaUpdate) -> None:
        self.telemetry.numa = msg.status
        self._changed(NumaPanel)

    def feed_telemetry(self, backend: str, devices: list, reasons: list[str], ticks: list,
                       numa: Any = None, ui_cpu_pct: float | None = None, topology: Any = None) -> None:
        """Fixed telemetry for tests and replays, without a sampler."""
        t = self.telemetry
        t.backend, t.devices, t.reasons, t.topology = backend, devices, reasons, topology
        for tick in ticks:
            t.add_tick(tick, ui_cpu_pct)
        t.numa = numa
        self.redraw_all()

    # ---- tracing (benchmarks/dashboard_overhead.py reads this) ----------------------------------

    def _trace_event(self, event: str, **fields: Any) -> None:
        if not self._trace:
            return
        line = {"event": event, "t": time.time(), "perf_ns": time.perf_counter_ns(), **fields}
        try:
            with open(self._trace, "a") as f:
                f.write(json.dumps(line) + "\n")
        except OSError:
            pass

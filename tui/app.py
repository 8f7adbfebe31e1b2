"""LlmtopApp: the dashboard. It composes the panels and forwards: engine events and user
choices go to the DashboardModel (tui/model.py: the state, the run loop, the policy); the model
says which topics changed, the App bumps one reactive counter per topic, and each panel
watches the topics it shows (widgets/base.py) and redraws itself.

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

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.geometry import Size
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Input, Static, TabbedContent, TabPane

from llmtop.engine.protocol import Configure, Generate, Shutdown
from llmtop.engine.session_log import SessionWriter

from . import textual_fixes, theming
from .commands import palette_commands
from .messages import SessionSaved
from .engine_link import EngineLink
from .model import TOPICS, DashboardModel
from .telemetry_link import TelemetryLink
from .requests import PROMPT_SET, RunSettings, has_chat_template
from .screens.confirm import ConfirmScreen
from .screens.help import HelpScreen
from .screens.profile import ProfileScreen
from .widgets.axis_list import AxisList
from .widgets.comparison import ComparisonTable
from .widgets.footer import KeyFooter
from .widgets.gpu_panel import GpuPanel
from .widgets.header import LlmtopHeader
from .widgets.host_panel import HostPanel
from .widgets.latency_plot import LatencyPlot
from .widgets.metrics import MetricsPanel
from .widgets.numa_panel import NumaPanel
from .widgets.optimizations import OptimizationsPanel
from .widgets.run_settings import RunSettingsPanel
from .widgets.server_panel import ServerPanel
from .widgets.token_stream import TokenStream

textual_fixes.apply()

DEFAULT_PROMPT = PROMPT_SET[0]
TABS = ("optimize", "run", "gpu", "host", "numa")
# Side by side the left column needs ~60 columns (plot axes, readable text) and the right the
# metrics table's width (label and two value columns with their headers: 64, app.tcss' #right
# min-width); below their sum the panels stack in one column.
STACK_BELOW = 60 + 64
CHROME_ROWS = 3      # header (2) and footer (1) around the body
TABS_MIN_ROWS = 12   # stacked: the tab bar and enough of a panel to use it
# keys that act on the whole dashboard: none of them acts while an input field has focus
TYPING_SAFE = ("quit", "help", "command_palette", "leave_input", "save_session", "restart_engine",
               "reconnect", "focus_next", "focus_previous")   # Tab: the next field


def _start_resource_tracker() -> None:
    """multiprocessing's spawn passes sys.stderr's fd to its resource tracker; under Textual
    stderr is a capture object without a real fd ('bad value(s) in fds_to_keep'), so the
    tracker must be running before the app takes the terminal."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
    except Exception:
        pass


class LlmtopApp(EngineLink, TelemetryLink, App):
    CSS_PATH = "app.tcss"
    TITLE = "llmtop"
    ENABLE_COMMAND_PALETTE = True
    MAXIMIZABLE = ("tokens", "plot", "metrics", "comparison", "tabs")
    ALLOW_IN_MAXIMIZED_VIEW = "KeyFooter, LlmtopHeader"
    BINDINGS = [
        Binding("q", "quit", "Quit", tooltip="quit: closes the engine, no process is left behind"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True,
                tooltip="quit (as q): closes the engine"),
        Binding("question_mark,f1", "help", "Help", tooltip="this help"),
        # priority: acted on when the App reads the key, so the keys behind it go to the field
        Binding("slash", "focus_prompt", "Prompt", priority=True,
                tooltip="type a prompt: Enter runs it, Esc leaves the field"),
        Binding("space", "toggle_pause", "Pause", tooltip="pause / resume the run loop (the current run finishes)"),
        Binding("s", "stop_run", "Stop", tooltip="stop the current run now and pause"),
        Binding("x", "cancel_change", "Cancel change", tooltip="cancel the options chosen for the next run (back to what runs)"),
        Binding("c", "clear_history", "Clear", tooltip="clear the history (asks first): tokens, plot, comparison"),
        Binding("ctrl+s", "save_session", "Save", tooltip="save the session (every run record, the comparison) as JSON"),
        Binding("ctrl+r", "restart_engine", "Restart engine", tooltip="restart the engine process (after a crash, or any time)"),
        Binding("ctrl+r", "reconnect", "Reconnect", tooltip="connect to the attached server again (after it restarted, or any time)"),
        Binding("b", "baseline", "Baseline", tooltip="make the current configuration the speedup baseline (★)"),
        Binding("f", "profile", "Profile", tooltip="capture a step profile in the next run: top kernels, busy/idle split"),
        Binding("t", "next_theme", "Theme", tooltip="next theme (llmtop-dark, light, high-contrast, rocm, yours)"),
        Binding("o", "show_tab('optimize')", "Optimize", show=False, tooltip="show the optimizations"),
        Binding("r", "show_tab('run')", "Run", show=False, tooltip="show the run settings (prompt, batch, tokens, sampling)"),
        Binding("g", "show_tab('gpu')", "GPU", show=False, tooltip="show the GPU panel"),
        Binding("h", "show_tab('host')", "Host", show=False, tooltip="show the host panel (CPU cores, memory)"),
        Binding("n", "show_tab('numa')", "NUMA", show=False, tooltip="show the NUMA panel"),
        Binding("left", "next_tab(-1)", "Previous tab", show=False, tooltip="the tab to the left"),
        Binding("right", "next_tab(1)", "Next tab", show=False, tooltip="the tab to the right"),
        *[Binding(str(i), f"maximize_panel({i})", f"Maximise {name}", show=False,
                  tooltip=f"maximise the {name} panel (header and footer stay); Esc restores")
          for i, name in enumerate(("tokens", "plot", "metrics", "comparison", "tabs"), 1)],
        Binding("escape", "leave_input", "Leave", show=False,
                tooltip="leave the input field, or restore a maximised panel"),
        Binding("ctrl+down", "scroll_body(1)", "Scroll down", show=False,
                tooltip="narrow terminals (panels stacked): scroll the panels down a page"),
        Binding("ctrl+up", "scroll_body(-1)", "Scroll up", show=False,
                tooltip="narrow terminals (panels stacked): scroll the panels up a page"),
    ]

    # one counter per model topic; panels watch the ones they show (widgets/base.py)
    for _topic in TOPICS:
        locals()[f"v_{_topic}"] = var(0)
    del _topic

    def __init__(self, configure: Configure | None = None, request: Generate | None = None,
                 theme_name: str | None = None, *, start_engine: bool = True, telemetry: bool = True,
                 client: Any = None, session_dir: str | Path | None = None,
                 telemetry_hz: float = 4.0, record: str | Path | None = None,
                 replay: Any = None, engine_threads: int | None = None, chat: bool | None = None,
                 times_path: str | Path | None = None) -> None:
        """`record`: a JSONL session file the engine events are appended to as they arrive.
        `replay`: a session_log.ReplaySource played instead of an engine (llmtop replay).
        `engine_threads`: the engine's CPU threads; None keeps a core for this UI when torch
        would take them all (engine/threads.py says why). `chat`: prompts through the chat
        template; None: where the model has one (tui/requests.py). `times_path`: where how
        long each configuration took to apply is kept (None: not kept)."""
        super().__init__()
        self.engine_threads = engine_threads
        self.replay = replay
        if replay is not None:
            start_engine = telemetry = False
        self.recorder = SessionWriter(record) if record and replay is None else None
        configure = configure or Configure()
        request = request or Generate(prompt=DEFAULT_PROMPT)
        if chat is None and not request.messages and request.prompt_len is None:
            chat = has_chat_template(configure.model)
        settings = RunSettings.from_request(request, DEFAULT_PROMPT, chat)
        self.model = DashboardModel(configure, settings, self,
                                    Path(times_path) if times_path else None)
        self.start_engine = start_engine
        self.telemetry_on = telemetry
        self.telemetry_hz = telemetry_hz
        self.session_dir = Path(session_dir) if session_dir else Path.cwd()
        self.client = client           # an EngineClient; adopted if given (tests share one)
        # llmtop attach: the server's URL, from its EndpointClient (engine/endpoint/client.py)
        self.attached: str | None = getattr(client, "url", None)
        self.model.attached = self.attached
        self.generation = 0            # bumped per engine instance; stale events are dropped
        self._engine_lock = threading.Lock()
        self._closing = False
        self._owns_client = client is None
        self._sampler = None
        self._backend = None
        self._trace = os.environ.get("LLMTOP_TRACE") or None
        self._first_token_traced = False
        self._theme_problems: list[str] = []
        self._drawn = False
        self._setup_themes(theme_name)
        if start_engine and client is None:
            _start_resource_tracker()

    # ---- the model's port (tui/model.py Port) -------------------------------------------------

    def send(self, command: Any) -> bool:
        if self.client is None or self._closing:
            return False
        self.client.send(command)
        return True

    def notify(self, message: str, severity: str = "information", timeout: float | None = None,
               **kw: Any) -> None:
        super().notify(message, severity=severity, timeout=timeout, **kw)

    def changed(self, *topics: str) -> None:
        for topic in topics:
            name = f"v_{topic}"
            setattr(self, name, getattr(self, name) + 1)
        if "error" in topics:
            self._show_error()

    def fresh_engine(self) -> None:
        self._launch_engine()

    def show_profile(self, profile: Any, opts: dict[str, str]) -> None:
        self.push_screen(ProfileScreen(profile, opts))

    # ---- what widgets and tests read -----------------------------------------------------------

    @property
    def session(self):
        return self.model.session

    @property
    def telemetry(self):
        return self.model.telemetry

    @property
    def desired(self) -> Configure:
        return self.model.desired

    @property
    def engine_pid(self) -> int | None:
        return self.client.pid if self.client is not None else None

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
                        server = ServerPanel(id="server-panel")
                        server.display = self.attached is not None
                        yield server
                        yield OptimizationsPanel(id="optimizations")
                    with TabPane("Run r", id="run"):
                        yield RunSettingsPanel(id="run-settings")
                    with TabPane("GPU g", id="gpu"):
                        with VerticalScroll(classes="panel-scroll", can_focus=False):
                            gpu = GpuPanel(id="gpu-panel")
                            gpu.watches = ("telemetry", "model", "device")
                            yield gpu
                    with TabPane("Host h", id="host"):
                        with VerticalScroll(classes="panel-scroll", can_focus=False):
                            host = HostPanel(id="host-panel")
                            yield host
                    with TabPane("NUMA n", id="numa"):
                        with VerticalScroll(classes="panel-scroll", can_focus=False):
                            numa = NumaPanel(id="numa-panel")
                            numa.watches = ("numa",)
                            yield numa
        yield KeyFooter(id="footer")

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
        if not self.screen_stack:
            return
        for w in self.screen_stack[0].query("*"):
            if hasattr(w, "redraw_now") and w.is_mounted:
                w.redraw_now()
        self._show_error()

    def refresh_header(self) -> None:
        self.changed("config")

    def _show_error(self) -> None:
        if not self.screen_stack or not self._drawn:
            return
        error = self.model.error
        bar = self.screen_stack[0].query_one("#error-bar", Static)
        bar.update(f"✖ {error}" if error else "")
        bar.set_class(bool(error), "visible")

    # ---- user actions -------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While an input field has focus only quitting, help and leaving the field act: every
        other key is the field's (issue 14.2)."""
        if isinstance(self.focused, Input) and action not in TYPING_SAFE:
            return False
        if action == "focus_prompt" and self.screen is not self.screen_stack[0]:
            return False   # a priority key: not under the palette, help or a question
        if action in ("restart_engine", "reconnect"):   # one ctrl+r, named for what it does
            return (action == "reconnect") == (self.attached is not None)
        return True

    async def action_quit(self) -> None:
        self._trace_event("quit_key")   # the tmux test times the quit from here
        if self._owns_client and self.client is not None:
            # the engine ends its run and exits while Textual tears the screen down (~0.2 s);
            # on_unmount then finds it gone or going
            self.client.send(Shutdown())
        self.exit()

    def action_focus_prompt(self) -> None:
        """The prompt field has the focus before the next key is read: keys typed right after
        / (queued behind it when the UI lags) are the field's, never the dashboard's (a space
        paused the loop, an s stopped it: the traced soak). Not Widget.focus or
        call_after_refresh: both queue the focus behind those keys."""
        self.action_show_tab("run")
        screen = self.screen_stack[0]
        screen.set_focus(screen.query_one("#set-prompt", Input))

    def action_leave_input(self) -> None:
        if isinstance(self.focused, Input):
            self.set_focus(None)
        elif self.screen.maximized is not None:
            self.screen.minimize()

    def action_maximize_panel(self, index: int) -> None:
        """Maximise one panel (header and footer stay); Esc restores."""
        name = self.MAXIMIZABLE[index - 1]
        screen = self.screen_stack[0]
        if name == "metrics" and screen.has_class("-stacked"):
            name = "metrics-stacked"
        screen.maximized = screen.query_one(f"#{name}")   # any panel, scrollable or not

    def action_toggle_pause(self) -> None:
        self.model.toggle_pause()

    def action_stop_run(self) -> None:
        self.model.stop_run()

    def action_cancel_change(self) -> None:
        if not self.model.cancel_change():
            self.notify("nothing to cancel: the next run uses what runs now", timeout=3)

    def action_profile(self, steps: int = 8) -> None:
        self.model.ask_profile(steps)

    def action_clear_history(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self.model.clear_history()
                self.notify("history cleared", timeout=2)

        self.push_screen(ConfirmScreen("Clear the history (tokens, plot, comparison)? "
                                       "The session file keeps every record."), answer)

    def action_baseline(self) -> None:
        """b: the current configuration's row becomes ★ (Enter on a row picks that row)."""
        run = self.session.current_or_last()
        if run is None or run.key not in self.session.rows:
            self.notify("no finished run of this configuration yet", severity="warning", timeout=3)
            return
        self.model.set_baseline(run.key)

    def select_option(self, axis: str, name: str) -> bool:
        return self.model.select_option(axis, name)

    def select_tp(self, size: int) -> bool:
        return self.model.select_tp(size)

    @on(ComparisonTable.BaselineChosen)
    def _baseline_chosen(self, msg: ComparisonTable.BaselineChosen) -> None:
        self.model.set_baseline(msg.key)

    @on(AxisList.Chosen)
    def _option_chosen(self, msg: AxisList.Chosen) -> None:
        if msg.axis == "tp":
            self.model.select_tp(int(msg.name))
        else:
            self.model.select_option(msg.axis, msg.name)

    @on(RunSettingsPanel.Changed)
    def _settings_changed(self, msg: RunSettingsPanel.Changed) -> None:
        self.model.set_settings(msg.settings)
        if msg.submitted:
            self.set_focus(None)
            self.notify("the next run uses it", timeout=2)

    def action_show_tab(self, tab: str) -> None:
        tabs = self.screen_stack[0].query_one("#tabs", TabbedContent)
        tabs.active = tab
        if self.screen_stack[0].has_class("-stacked"):  # below the first screen: bring it up
            tabs.scroll_visible(top=True, animate=False)
        if tab == "optimize" and self.screen is self.screen_stack[0]:
            # `o` then the arrows and Enter: the cursor is in the first axis' list
            self.screen.set_focus(self.screen.query_one("#opt-attention"))

    def action_next_tab(self, step: int) -> None:
        tabs = self.screen_stack[0].query_one("#tabs", TabbedContent)
        self.action_show_tab(TABS[(TABS.index(tabs.active) + step) % len(TABS)])

    def action_scroll_body(self, pages: int) -> None:
        body = self.screen_stack[0].query_one("#body")
        if pages > 0:
            body.scroll_page_down(animate=False)
        else:
            body.scroll_page_up(animate=False)

    def action_command_palette(self) -> None:
        # no fixed id (Textual gives "--command-palette"): a closed palette stays among the
        # app's children until its removal, and a ctrl+p before that pushed a second one with
        # the same id (DuplicateIds, the app died: seen in the traced soak)
        if self.use_command_palette and not textual_fixes.OncePalette.is_open(self):
            self.push_screen(textual_fixes.OncePalette())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def key_bindings(self) -> list[Binding]:
        """This session's bindings: ctrl+r restarts llmtop's engine or reconnects to an
        attached server, never both (check_action picks the same one for the key)."""
        gone = "restart_engine" if self.attached is not None else "reconnect"
        return [b for b in self.BINDINGS if isinstance(b, Binding) and b.action != gone]

    def help_bindings(self) -> list[Binding]:
        keys = self.key_bindings()
        keys.append(Binding("ctrl+p", "command_palette", "Command palette",
                            tooltip="command palette: every optimization, theme and action by name"))
        return keys

    def action_toggle_sampling(self) -> None:
        s = self.model.settings
        self.model.set_settings(replace(s, sample=not s.sample))
        self.notify(f"sampling {'on' if not s.sample else 'off (greedy)'} from the next run", timeout=3)

    @work(thread=True, group="save")
    def action_save_session(self) -> None:
        data = self.session.export()
        data["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        data["settings"] = vars(self.model.settings).copy()
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

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from palette_commands(self)

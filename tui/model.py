"""DashboardModel: the dashboard's state and policy, without Textual (unit-tested without a
terminal).

It owns the Session (what was measured), the desired configuration and run settings, and the
run loop: what to send the engine next and when. The App composes widgets and forwards to it:
engine events go to `handle`, user choices to `select_option`, `select_tp`, `toggle_pause`...
The model talks back through a small Port (send a command, notify the user, say which topics
changed, start a fresh engine, show a step profile), which the App implements with Textual and
tests implement with lists.

The loop, in words: the engine is configured with `desired` when they differ, else the next
run starts (unless paused). A configuration that fails to apply is reported once, remembered
as failed, and the last configuration that worked is applied again (at start-up: the
defaults); a failed configuration is sent again only when the user asks for it again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from llmtop.engine import catalogue
from llmtop.engine.client import needs_fresh_engine
from llmtop.engine.protocol import (ConfigApplied, Configure, DeviceInfo, EngineEvent, Error,
                                    Generate, GuardResult, ModelInfo, RunDone, RunStarted,
                                    ServerMetrics, Status, StepProfile, Stop, Token)

from .analysis import tp_choices
from .requests import RunSettings
from .state import Marker, Session, Telemetry, config_label
from .step_times import StepTimes

# errors of a run after which the loop pauses: running the same request again would fail the same way
PROFILES_KEPT = 8

# what the widgets watch (the App keeps one reactive counter per topic)
TOPICS = ("status", "config", "tokens", "runs", "markers", "model", "device", "guard", "error",
          "telemetry", "numa", "profile", "server")


class Port(Protocol):
    def send(self, command: Any) -> bool: ...
    def notify(self, text: str, severity: str = "information", timeout: float = 4) -> None: ...
    def changed(self, *topics: str) -> None: ...
    def fresh_engine(self) -> None: ...
    def show_profile(self, profile: StepProfile, opts: dict[str, str]) -> None: ...


def config_id(cfg: Configure) -> tuple:
    """A configuration's identity for the loop: its options, TP size and GPUs."""
    return (tuple(sorted(cfg.opts.items())), cfg.tp, tuple(cfg.gpus) if cfg.gpus else None)


def copy_config(cfg: Configure) -> Configure:
    return replace(cfg, opts=dict(cfg.opts), gpus=list(cfg.gpus) if cfg.gpus else None)


class DashboardModel:
    def __init__(self, configure: Configure, settings: RunSettings, port: Port,
                 times_path: Path | None = None) -> None:
        self.port = port
        self.desired = Configure(configure.model, configure.device, configure.dtype,
                                 {**catalogue.DEFAULTS, **configure.opts, "dtype": configure.dtype},
                                 configure.tp, configure.gpus)
        self.start_config = copy_config(self.desired)
        self.settings = settings
        self.session = Session()
        self.telemetry = Telemetry()
        self.paused = False
        self.error = ""
        self.engine_up = False
        self.busy = False              # a Configure or Generate is in flight
        self.inflight: Generate | Configure | None = None
        self.run_id = 0
        self.prompt_index = 0
        self.profile_pending = 0       # decode steps to profile in the next run
        self.profiles: deque[StepProfile] = deque(maxlen=PROFILES_KEPT)
        self.working: Configure | None = None      # the last configuration that applied
        self.failed: dict[tuple, str] = {}         # configurations that failed, and why
        self.applying_since: float | None = None   # monotonic time the in-flight Configure left
        self.times = StepTimes(times_path)
        self._config_error = ""                    # the in-flight Configure failed
        self._before: Configure | None = None      # what ran before the in-flight Configure
        self.resend = False    # after a failure the engine holds the old config or none: resend
        self.attached: str | None = None   # an attached server's URL: nothing here restarts it
        self.unchecked: dict[str, str] = {}   # options chosen before the engine said what runs

    # ---- what the widgets ask ---------------------------------------------------------------

    @property
    def applied(self) -> Configure | None:
        return self.session.config

    def option_state(self, axis: str, name: str) -> tuple[bool, str]:
        """(can it run here, why not / caveat) from the engine's DeviceInfo."""
        if axis not in catalogue.AXES or name not in catalogue.AXES[axis]:
            return False, f"{axis}={name} is not an option"
        dev = self.session.device
        if dev is None:
            return False, "waiting for the engine to report this device's options"
        info = dev.options.get(axis, {}).get(name, {})
        return bool(info.get("ok")), info.get("reason", "")

    def waiting_for_device(self) -> bool:
        """llmtop's engine has not yet reported the device's options (an attached server's
        configuration is not chosen here)."""
        return self.session.device is None and not self.attached

    def _check_unchecked(self) -> None:
        """The options chosen while waiting, against the device's table: one that cannot run
        here goes back to what runs, with the reason, before any run uses it."""
        for axis, name in self.unchecked.items():
            ok, reason = self.option_state(axis, name)
            if ok or self.desired.opts.get(axis) != name:
                continue
            back = (self.applied or self.start_config).opts.get(axis, catalogue.DEFAULTS[axis])
            self.desired.opts[axis] = back
            if axis == "dtype":
                self.desired.dtype = back
            self.port.notify(f"{axis}={name} cannot run here: {reason}", "warning", 6)
            self.port.changed("config")
        self.unchecked.clear()

    def fixed(self) -> str:
        """Why no option can be chosen, when none can (an attached server's configuration is
        its own: engine/endpoint/client.py); "" for llmtop's engine, whose defaults always run."""
        dev = self.session.device
        infos = [info for axis in (dev.options.values() if dev else ()) for info in axis.values()]
        if not infos or any(info.get("ok") for info in infos):
            return ""
        return str(infos[0].get("reason", ""))

    def tp_choices(self) -> list[tuple[int, bool, str]]:
        """(size, can run, why not) for the model and device the engine reported ([] before)."""
        s = self.session
        if s.model is None or s.device is None:
            return []
        if self.fixed():
            return [(s.model.tp, False, self.fixed())]
        return tp_choices(s.model.heads, s.model.kv_heads, s.device.device,
                          getattr(s.device, "gpu_count", 0))

    def would_fail(self, axis: str, name: str) -> str:
        """Why choosing axis=name now gives a configuration that failed to apply before ("" if
        it did not): the reason stays beside the option after its toast has gone."""
        return self.failed.get(config_id(replace(self.desired, opts={**self.desired.opts,
                                                                     axis: name})), "")

    def conflict(self) -> str | None:
        return catalogue.conflicts(self.desired.opts)

    def config_needed(self) -> bool:
        applied = self.applied
        return (self.resend or applied is None
                or (applied.opts, applied.tp) != (self.desired.opts, self.desired.tp))

    def pending_changes(self) -> list[str]:
        applied = self.applied
        if applied is None or not applied.opts:
            return []
        out = [f"{a}={v}" for a, v in self.desired.opts.items() if applied.opts.get(a) != v]
        if applied.tp != self.desired.tp:
            out.append(f"tp={self.desired.tp}")
        return out

    @property
    def applying(self) -> Configure | None:
        """The configuration being applied now (a Configure in flight), else None."""
        return self.inflight if isinstance(self.inflight, Configure) else None

    def wait_text(self) -> str:
        """What a long wait is: the configuration being applied, for how long, and how long it
        took the last time on this machine."""
        cfg = self.applying
        if cfg is None or self.applying_since is None:
            return ""
        took = time.monotonic() - self.applying_since
        text = f"applying {config_label(cfg.opts, tp=cfg.tp)}: {took:.0f} s"
        last = self.times.last(cfg)
        text += f" (last time {last:.0f} s)" if last is not None else " (first time here)"
        return text

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

    def gpu_busy_pct(self) -> float | None:
        """The GPU's busy share: the sampler's utilization, else the last GPU step profile's."""
        busy = self.telemetry.gpu_busy_pct()
        last = self.profiles[-1] if self.profiles else None
        if busy is None and last is not None and last.device == "gpu" and last.step_ms:
            busy = 100 * last.busy_ms / last.step_ms
        return busy

    # ---- user choices -----------------------------------------------------------------------

    def select_option(self, axis: str, name: str) -> bool:
        """Choose an option for the next run; refused (with the reason shown) if unavailable.
        Choosing a configuration that failed before is the user asking to try it again. Before
        the engine has said what runs on this device (its first ~20 s on a CPU), the choice is
        kept and checked when it does (`_check_unchecked`)."""
        if self.waiting_for_device() and name in catalogue.AXES.get(axis, ()):
            self.unchecked[axis] = name
            self.port.notify(f"{axis}={name}: from the next run, once the engine has said what "
                             "runs on this device", timeout=4)
        else:
            ok, reason = self.option_state(axis, name)
            if not ok:
                self.port.notify(f"{axis}={name} cannot run here: {reason}", "warning", 6)
                return False
        self.desired.opts[axis] = name
        if axis == "dtype":
            self.desired.dtype = name
        self.failed.pop(config_id(self.desired), None)
        why = self.conflict()
        if why:
            self.port.notify(why, "warning", 6)
        self.port.changed("config")
        self.step()
        return True

    def select_tp(self, size: int) -> bool:
        """Choose the tensor-parallel size for the next run (a reload, sharded over `size`
        ranks); refused, with the reason shown, where the model's heads or the devices do not
        allow it. A --gpus set of another length is dropped: llmtop then picks the GPUs."""
        choices = {n: (ok, why) for n, ok, why in self.tp_choices()}
        ok, why = choices.get(size, (False, "the engine has not reported the model and device yet"
                                     if not choices else "not a size offered here"))
        if not ok:
            self.port.notify(f"tp={size} cannot run here: {why}", "warning", 6)
            return False
        if size != self.desired.tp:
            self.desired.tp = size
            if self.desired.gpus is not None and len(self.desired.gpus) != size:
                self.desired.gpus = None
            self.port.notify(f"tp={size} from the next run (the model reloads, split over {size} "
                             f"rank{'s' if size != 1 else ''})", timeout=4)
        self.failed.pop(config_id(self.desired), None)
        self.port.changed("config")
        self.step()
        return True

    def apply_preset(self, preset: str) -> list[str]:
        """A preset's options, those that can run here; returns the refused ones with why."""
        refused = []
        waiting = self.waiting_for_device()
        for axis, name in catalogue.PRESETS[preset].items():
            ok, reason = self.option_state(axis, name)
            if waiting:        # checked when the engine reports the device, as select_option
                self.unchecked[axis] = name
                self.desired.opts[axis] = name
            elif ok:
                self.desired.opts[axis] = name
            else:
                refused.append(f"{axis}={name} ({reason})")
        if waiting:
            self.port.notify(f"preset {preset}: from the next run, once the engine has said "
                             "what runs on this device", timeout=4)
        self.failed.pop(config_id(self.desired), None)
        if refused:
            self.port.notify("not applied: " + "; ".join(refused), "warning", 8)
        self.port.changed("config")
        self.step()
        return refused

    def cancel_change(self) -> bool:
        """Drops the options chosen for the next run: back to the configuration that runs (or
        ran last). A Configure already in flight finishes; the loop then applies that one."""
        target = self.applied if self.applied is not None and not self.applying else self.working
        if target is None or (not self.pending_changes() and self.applying is None):
            return False
        self.desired = copy_config(target)
        self.port.notify(f"change cancelled: back to {config_label(target.opts, tp=target.tp)}"
                         + (" once this step ends" if self.applying else ""), timeout=4)
        self.port.changed("config")
        return True

    def set_settings(self, settings: RunSettings) -> None:
        self.settings = settings
        self.port.changed("config")

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.port.notify("paused: the current run finishes, no new one starts" if self.paused
                         else "resumed", timeout=2)
        self.port.changed("status")
        self.step()

    def stop_run(self) -> None:
        self.paused = True
        if isinstance(self.inflight, Generate):
            self.port.send(Stop())
        self.port.changed("status")

    def ask_profile(self, steps: int = 8) -> None:
        self.profile_pending = steps
        when = "when the loop resumes (space)" if self.paused else "in the next run"
        self.port.notify(f"profiling the prefill and {steps} decode steps {when}; "
                         "the profile opens when it is done", timeout=6)
        self.port.changed("status")

    def set_baseline(self, key: str) -> bool:
        if not self.session.set_baseline(key):
            return False
        self.port.notify(f"★ speedup baseline: {self.session.rows[key].label}", timeout=2)
        self.port.changed("runs")
        return True

    def clear_history(self) -> None:
        self.session.clear()
        self.port.changed(*TOPICS)

    # ---- the engine's life ------------------------------------------------------------------

    def engine_starting(self) -> None:
        """A new engine process is being started: it holds no configuration yet."""
        self.session.config = None
        self.engine_up = False
        self.busy = True
        self.inflight = None
        self.error = ""
        self.session.on_status(Status("starting", "starting the engine process"))
        self.port.changed("status", "error", "config")

    def engine_adopted(self, alive: bool) -> None:
        self.engine_up = alive
        self.busy = False
        self.session.on_status(Status("ready", "engine adopted"))
        self.port.changed("status")
        self.step()

    def set_error(self, text: str) -> None:
        self.error = text
        self.port.changed("error", "status")

    # ---- the loop ---------------------------------------------------------------------------

    def step(self) -> None:
        """One step of the loop: reconfigure if the desired configuration differs from what
        runs, else the next run."""
        if not self.engine_up or self.busy or self.error:
            return
        if self.config_needed() and not self.conflict():
            if config_id(self.desired) in self.failed:
                # never retried on its own (choosing it again retries): what worked runs on
                back = self.working or self.applied
                if back is None or config_id(back) in self.failed:
                    return
                self.desired = copy_config(back)
                self.port.changed("config")
                if not self.config_needed():
                    return self.step()
            if self.unchecked and self.waiting_for_device() and self.applied is None:
                # the engine reports what runs here with its first configuration: the one
                # asked for at start-up goes first, the choices made while waiting after
                self._send(copy_config(self.start_config))
                return
            if needs_fresh_engine(self.applied, self.desired):
                self.port.notify("a new tensor-parallel group starts a new engine process", timeout=3)
                self.port.fresh_engine()
                return
            self._send(copy_config(self.desired))
            return
        if self.applied is None or self.paused:
            return
        self.run_id += 1
        request = self.settings.request(self.run_id, self.prompt_index)
        self.prompt_index += 1
        if self.profile_pending:
            request.profile_steps, self.profile_pending = self.profile_pending, 0
        self._send(request)

    def _send(self, command: Any) -> None:
        self.busy = True
        self.inflight = command
        if isinstance(command, Configure):
            self.applying_since = time.monotonic()
            self._config_error = ""
            self._before = self.applied
            self.resend = False
            self.port.changed("status")
        if not self.port.send(command):
            self.busy = False
            self.inflight = None

    def _idle(self) -> None:
        """The engine finished what was in flight (ready): note how long a Configure took, or
        that it failed, then the loop's next step."""
        cfg = self.applying
        if cfg is not None:
            if self._config_error:
                self._config_failed(cfg, self._config_error)
            else:
                self.working = copy_config(self.applied or cfg)
                if self.applying_since is not None:
                    self.times.note(cfg, time.monotonic() - self.applying_since)
        self.busy = False
        self.inflight = None
        self.applying_since = None
        self.port.changed("status", "config")

    def _config_failed(self, cfg: Configure, message: str) -> None:
        """Reported once; the last working configuration (else the start-up defaults) is
        applied again; the failed one is never sent again unless the user asks."""
        self.failed[config_id(cfg)] = message
        if self.attached:   # the server's own configuration: no other one to fall back to
            self.set_error(f"{message}. {self.restart_hint()}")
            return
        self.session.config = self._before   # the engine holds that one or none: send it again
        self.resend = True
        self.session.markers.append(Marker(self.session.steps, "failed",
                                           f"{config_label(cfg.opts, tp=cfg.tp)} failed"))
        fallback = self.working
        if fallback is None or config_id(fallback) in self.failed:
            fallback = Configure(cfg.model, cfg.device, catalogue.DEFAULTS.get("dtype", cfg.dtype),
                                 {**catalogue.DEFAULTS}, 1, None)
        if config_id(fallback) in self.failed:
            self.set_error(f"the engine cannot load this model: {message}")
            return
        self.desired = copy_config(fallback)
        self.port.notify(f"{config_label(cfg.opts, tp=cfg.tp)} failed to apply: {message}. "
                         f"Back to {config_label(fallback.opts, tp=fallback.tp)}; choose it "
                         "again to retry.", "error", 12)
        self.port.changed("config", "markers")

    def restart_hint(self) -> str:
        what = "reconnect" if self.attached else "restart the engine"
        return f"Press ctrl+r to {what}; everything measured so far is kept."

    # ---- engine events ----------------------------------------------------------------------

    def handle(self, ev: Any) -> None:
        """Applies one engine event (tests feed fixed events here, without an engine)."""
        s = self.session
        if isinstance(ev, Token):
            if s.on_token(ev):
                self.port.changed("tokens")
        elif isinstance(ev, Status):
            self._on_status(ev)
        elif isinstance(ev, RunStarted):
            req = self.inflight if isinstance(self.inflight, Generate) else None
            asked = req.messages[-1].get("content") if req is not None and req.messages else None
            s.on_run_started(ev, sample=bool(req and req.sample),
                             prompt_len=req.prompt_len if req else None, asked=asked)
            self.port.changed("tokens", "status")
        elif isinstance(ev, RunDone):
            s.on_run_done(ev)
            self.port.changed("tokens", "runs", "status")
        elif isinstance(ev, ModelInfo):
            s.on_model(ev)
            self.port.changed("model")
        elif isinstance(ev, DeviceInfo):
            s.on_device(ev)
            self._check_unchecked()
            self.port.changed("device")
        elif isinstance(ev, ConfigApplied):
            self._on_config(ev)
        elif isinstance(ev, EngineEvent):
            s.on_engine_event(ev)
            self.port.changed("markers")
        elif isinstance(ev, Error):
            self._on_error(ev)
        elif isinstance(ev, ServerMetrics):
            s.on_server_metrics(ev)
            self.port.changed("server")
        elif isinstance(ev, StepProfile):
            self._on_profile(ev)
        elif isinstance(ev, GuardResult):
            s.on_guard(ev)
            if ev.status == "diverged":
                self.port.notify(f"correctness guard: greedy tokens diverge from the baseline "
                                 f"({ev.baseline}) at token {ev.diverged_at}", "warning", 6)
            self.port.changed("guard")

    def _on_status(self, ev: Status) -> None:
        self.session.on_status(ev)
        if ev.phase == "ready":
            self.engine_up = True
            self._idle()
        elif ev.phase == "error":
            if self.applying is not None and self._config_error:
                self._idle()
            else:
                self.busy = False
                self.inflight = None
        self.port.changed("status")
        if ev.phase in ("ready", "error"):
            self.step()

    def _on_config(self, ev: ConfigApplied) -> None:
        cfg = self.session.on_config(ev)
        if self.applying is None or self.fixed():
            # not our request (an adopted engine, a replay), or nothing here can change it
            # (an attached server): what runs is what we want
            self.desired = copy_config(cfg)
            self.working = copy_config(cfg)
        self.desired.device = cfg.device
        self.port.changed("config", "markers")

    def _on_profile(self, ev: StepProfile) -> None:
        self.profiles.append(ev)
        s = self.session
        busy = f" {100 * ev.busy_ms / ev.step_ms:.0f}% busy" if ev.step_ms else ""
        run = next((r for r in reversed(s.runs) if r.run_id == ev.run_id), None)
        s.markers.append(Marker(run.first_step if run else s.steps, "profile", "profile" + busy))
        self.port.show_profile(ev, run.opts if run else self.desired.opts)
        self.port.changed("markers", "profile")

    def _on_error(self, ev: Error) -> None:
        s = self.session
        kind = str(getattr(ev.kind, "value", ev.kind))
        if kind == "engine_dead":
            if self.applying is not None:   # it died applying this one: do not apply it again
                self.failed[config_id(self.applying)] = ev.message
                self.desired = copy_config(self.working) if self.working else self.desired
            self.engine_up = False
            self.busy = False
            self.inflight = None
            s.on_run_error("engine died")
            s.on_status(Status("error", ev.message))
            self.set_error(f"{ev.message}. {self.restart_hint()}")
        elif self.applying is not None and kind != "not_configured":
            self._config_error = ev.message   # handled once, when the engine is ready again
        elif kind == "not_configured":
            s.config = None           # the engine lost its configuration: send it again
            self.busy = False
            self.inflight = None
            self.step()
        elif ev.kind.pausing:
            s.on_run_error(ev.message)
            self.paused = True
            if kind == "internal":
                self.set_error(f"engine error: {ev.message}. Press ctrl+r to restart the engine.")
            else:
                self.port.notify(f"{kind}: {ev.message} (paused; space resumes)", "error", 10)
            self.port.changed("tokens", "status")
        else:
            self.port.notify(f"{kind}: {ev.message}", "warning", 6)

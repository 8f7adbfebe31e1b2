"""Optimizations: every option of the catalogue; unavailable ones disabled with the reason shown.

Availability comes from the engine's DeviceInfo (the UI has no torch). A choice applies to the
next run: the app reconfigures the engine between runs.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from llmtop.engine.catalogue import AXES, HELP

from .base import Coalesced, palette
from .tp_control import TpControl

WAITING = "waiting for the engine to report what runs on this device"


class OptimizationsPanel(VerticalScroll, Coalesced):
    skip_hidden = True
    DEFAULT_CSS = """
    OptimizationsPanel { height: 1fr; padding: 0 1; }
    OptimizationsPanel > .axis-label { margin-top: 1; color: $primary; text-style: bold; }
    OptimizationsPanel > OptionList { height: auto; border: none; padding: 0; }
    OptimizationsPanel > #opt-status { height: auto; }
    """

    def compose(self):
        yield Static(id="opt-status")
        for axis, options in AXES.items():
            yield Label(f"{axis} · {HELP[axis]}", classes="axis-label")
            yield OptionList(*[Option(name, id=f"{axis}={name}", disabled=True) for name in options],
                             id=f"opt-{axis}", compact=True)
        yield TpControl(id="tp-control")

    def on_mount(self) -> None:
        self.redraw_now()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        axis, _, name = (event.option_id or "").partition("=")
        self.app.select_option(axis, name)

    def redraw_now(self) -> None:
        app = self.app
        v = palette(app)
        table = app.session.device.options if app.session.device else None
        applied = app.session.config.opts if app.session.config else {}
        wanted = app.desired.opts
        for axis, options in AXES.items():
            ol = self.query_one(f"#opt-{axis}", OptionList)
            for name in options:
                oid = f"{axis}={name}"
                info = (table or {}).get(axis, {}).get(name)
                ok = bool(info and info.get("ok"))
                reason = (info or {}).get("reason", "") if table else WAITING
                is_applied = applied.get(axis) == name
                is_wanted = wanted.get(axis) == name
                prompt = Text(no_wrap=False)
                if not ok:
                    prompt.append("✗ ", style=v["error"])
                    prompt.append(name, style="strike" if table else "")
                elif is_applied and is_wanted:
                    prompt.append("● ", style=v["success"])
                    prompt.append(name, style="bold")
                elif is_wanted:
                    prompt.append("◆ ", style=v["accent"])
                    prompt.append(name, style=f"bold {v['accent']}")
                    prompt.append("  next run", style=v["accent"])
                elif is_applied:
                    prompt.append("◌ ", style=v["secondary"])
                    prompt.append(name)
                    prompt.append("  until this run ends", style="dim")
                else:
                    prompt.append("○ ", style="dim")
                    prompt.append(name)
                if reason:
                    prompt.append(f"  {reason}", style="italic dim")
                ol.replace_option_prompt(oid, prompt)
                (ol.enable_option if ok else ol.disable_option)(oid)
        status = Text()
        conflict = app.conflict()
        if conflict:
            status.append("⚠ ", style=v["warning"])
            status.append(conflict, style=v["warning"])
            status.append("\n(the engine keeps its current configuration until this is resolved)",
                          style="dim")
        elif app.pending_changes():
            status.append("next run: " + " ".join(app.pending_changes()), style=f"bold {v['accent']}")
        else:
            status.append("● applied  ◆ next run  ✗ unavailable here (reason shown)", style="dim")
        self.query_one("#opt-status", Static).update(status)

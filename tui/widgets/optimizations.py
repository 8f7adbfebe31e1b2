"""Optimizations: every option of the catalogue; unavailable ones disabled with the reason shown.

Availability comes from the engine's DeviceInfo (the UI has no torch). A choice applies to the
next run: the model reconfigures the engine between runs. Each axis is an AxisList that posts
AxisList.Chosen; the App hands it to the model.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from llmtop.engine.catalogue import AXES, HELP

from .axis_list import AxisList
from .base import Coalesced, palette
from .tp_control import TpControl

WAITING = "waiting for the engine to report what runs on this device"
FAILURE_CHARS = 160  # of a failure's reason beside its option (the session file keeps it whole)


class OptimizationsPanel(VerticalScroll, Coalesced, can_focus=False):
    skip_hidden = True
    watches = ("config", "device", "status")
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
            yield AxisList(*[Option(name, id=f"{axis}={name}", disabled=True) for name in options],
                           id=f"opt-{axis}", compact=True)
        yield TpControl(id="tp-control")

    def on_mount(self) -> None:
        self.redraw_now()

    def option_prompt(self, name: str, ok: bool, known: bool, applied: bool, wanted: bool,
                      failed: str, reason: str) -> Text:
        v = palette(self.app)
        prompt = Text(no_wrap=False)
        if not known:
            prompt.append("… ", style="dim")
            prompt.append(name, style="dim")
        elif not ok:
            prompt.append("✗ ", style=v["error"])
            prompt.append(name, style="strike")
        elif applied and wanted:
            prompt.append("● ", style=v["success"])
            prompt.append(name, style="bold")
        elif wanted:
            prompt.append("◆ ", style=v["accent"])
            prompt.append(name, style=f"bold {v['accent']}")
            prompt.append("  next run (x cancels)", style=v["accent"])
        elif applied:
            prompt.append("◌ ", style=v["secondary"])
            prompt.append(name)
            prompt.append("  until this run ends", style="dim")
        else:
            prompt.append("○ ", style="dim")
            prompt.append(name)
        if failed:
            why = failed if len(failed) <= FAILURE_CHARS else failed[:FAILURE_CHARS - 1] + "…"
            prompt.append(f"  failed here: {why} (choose again to retry)", style=v["warning"])
        if reason:
            prompt.append(f"  {reason}", style="italic dim")
        return prompt

    def redraw_now(self) -> None:
        model = self.app.model
        v = palette(self.app)
        table = model.session.device.options if model.session.device else None
        applied = model.applied.opts if model.applied else {}
        wanted = model.desired.opts
        marked: set[str] = set()       # failures shown beside an option
        for axis, options in AXES.items():
            ol = self.query_one(f"#opt-{axis}", AxisList)
            for name in options:
                oid = f"{axis}={name}"
                info = (table or {}).get(axis, {}).get(name)
                ok = bool(info and info.get("ok"))
                reason = (info or {}).get("reason", "") if table else ""
                failed = model.would_fail(axis, name)
                marked.add(failed)
                ol.replace_option_prompt(oid, self.option_prompt(
                    name, ok, table is not None, applied.get(axis) == name,
                    wanted.get(axis) == name, failed, reason))
                ol.set_enabled(oid, ok)
        status = Text()
        conflict = model.conflict()
        if table is None:
            status.append(f"… {WAITING}", style="dim")
        elif model.fixed():
            status.append(f"read-only: the server's configuration, {model.fixed()}", style="bold")
        elif conflict:
            status.append("⚠ ", style=v["warning"])
            status.append(conflict, style=v["warning"])
            status.append("\n(the engine keeps its current configuration until this is resolved)",
                          style="dim")
        elif model.applying is not None:
            status.append(model.wait_text() + " · x cancels", style=f"bold {v['accent']}")
        elif model.pending_changes():
            status.append("next run: " + " ".join(model.pending_changes()) + " · x cancels",
                          style=f"bold {v['accent']}")
        else:
            status.append("● applied  ◆ next run  ✗ unavailable here (reason shown)", style="dim")
        # a failure no single option leads back to (two axes changed at once) is told here
        for why in [w for w in model.failed.values() if w not in marked][-2:]:
            status.append(f"\n✗ {why} (choose it again to retry)", style=v["warning"])
        self.query_one("#opt-status", Static).update(status)

"""Header: model, parameters, dtype, device, backend, active optimizations as badges, engine phase."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..state import AXIS_ORDER
from .base import Coalesced, palette

PHASE_ICON = {"starting": "◌", "loading": "◌", "compiling": "⚙", "capturing": "⚙", "tuning": "⚙",
              "warming": "◌", "ready": "●", "generating": "▶", "error": "✖"}


class LlmtopHeader(Widget, Coalesced):
    DEFAULT_CSS = """
    LlmtopHeader { height: 2; background: $panel; color: $foreground; padding: 0 1; }
    """

    def redraw_now(self) -> None:
        self.refresh()

    def phase_text(self) -> tuple[str, str]:
        """(text, colour variable) of the engine's phase as the user should read it."""
        app = self.app
        s = app.session.status
        if app.error:
            return "✖ error: " + app.error.splitlines()[0][:60], "error"
        text = f"{PHASE_ICON.get(s.phase, '·')} {s.phase}"
        if s.phase == "generating" and app.session.current is not None:
            text += f" run {app.session.current.run_id}"
        elif s.detail and s.phase != "ready":
            text += f": {s.detail[:48]}"
        if s.elapsed_s:
            text += f" {s.elapsed_s:.0f} s"
        if s.progress is not None:
            text += f" {s.progress:.0%}"
        if app.paused and s.phase in ("ready", "generating"):
            text += " · paused" if s.phase == "generating" else ""
            if s.phase == "ready":
                text = "⏸ paused"
        colour = {"error": "error", "generating": "success", "ready": "primary"}.get(s.phase, "warning")
        return text, colour

    def render(self) -> Text:
        app = self.app
        v = palette(app)
        session = app.session
        model, device = session.model, session.device
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("llmtop ", style=f"bold {v['primary']}")
        sep = (" │ ", v.get("secondary", v["foreground"]))
        if model is not None:
            line.append(model.name, style="bold")
            if model.synthetic:
                line.append(" (synthetic weights)", style=v["warning"])
            line.append(*sep)
            line.append(f"{model.params / 1e6:,.1f} M params" if model.params < 1e9
                        else f"{model.params / 1e9:,.2f} B params")
            line.append(f" · {model.layers} layers")
            line.append(*sep)
            line.append(model.dtype)
            line.append(*sep)
            dev = model.device + (f" ({device.name})" if device is not None else "")
            tp = (session.config or {}).get("tp", 1)
            line.append(dev + (f" × tp {tp}" if tp and tp > 1 else ""))
            if device is not None and device.threads and (model.device == "cpu" or device.threads_note):
                line.append(f" · {device.threads} of {device.cpus} threads",
                            style=v["warning"] if device.threads_note else "")
        else:
            line.append(f"{app.desired.model} on {app.desired.device}", style="bold")
        opts = (session.config or {}).get("opts", {})
        if opts:
            line.append(*sep)
            line.append(f"backend {opts.get('backend', 'hf')}")
        phase, colour = self.phase_text()
        right = Text(phase, style=f"bold {v[colour]}", no_wrap=True)
        width = self.size.width - 2 if self.size.width else 158
        pad = max(1, width - line.cell_len - right.cell_len)
        if line.cell_len + right.cell_len + 1 > width:
            line.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
            pad = max(1, width - line.cell_len - right.cell_len)
        line.append(" " * pad)
        line.append_text(right)

        badges = Text(no_wrap=True, overflow="ellipsis")
        if opts:
            for axis in AXIS_ORDER:
                if axis in opts and axis not in ("backend",):
                    badges.append(f" {axis} {opts[axis]} ", style=f"{v['foreground']} on {v['primary-muted']}"
                                  if "primary-muted" in v else f"reverse {v['primary']}")
                    badges.append(" ")
        else:
            badges.append("no configuration applied yet", style="dim")
        pending = app.pending_changes()
        if pending:
            badges.append(" next run: " + " ".join(pending) + " ", style=f"bold {v['accent']}")
        if device is not None and device.threads_note:  # what is measured differs from headless
            badges.append(f" {device.threads_note}", style=v["warning"])
        line.append("\n")
        line.append_text(badges)
        return line

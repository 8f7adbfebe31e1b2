"""Header: model, parameters, dtype, device, backend, active optimizations as badges, engine phase."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..analysis import bar
from ..state import AXIS_ORDER
from .base import Coalesced, palette

PHASE_ICON = {"starting": "◌", "loading": "◌", "compiling": "⚙", "capturing": "⚙", "tuning": "⚙",
              "warming": "◌", "ready": "●", "generating": "▶", "error": "✖"}


class LlmtopHeader(Widget, Coalesced):
    DEFAULT_CSS = """
    LlmtopHeader { height: 2; background: $panel; color: $foreground; padding: 0 1; }
    """
    watches = ("status", "config", "model", "device", "error")

    def redraw_now(self) -> None:
        self.refresh()

    def phase_text(self) -> tuple[str, str]:
        """(text, colour variable) of the engine's phase as the user should read it."""
        model = self.app.model
        s = model.session.status
        if model.error:
            return "✖ error: " + model.error.splitlines()[0][:60], "error"
        text = f"{PHASE_ICON.get(s.phase, '·')} {s.phase}"
        wait = model.wait_text()
        if wait and s.phase != "generating":
            # a long step says what runs, for how long, and how long it took here last time
            text += f" · {wait}"
        elif s.phase == "generating" and model.session.current is not None:
            text += f" run {model.session.current.run_id}"
        elif s.detail and s.phase != "ready":
            text += f": {s.detail[:48]}"
        if s.elapsed_s and not wait:
            text += f" {s.elapsed_s:.0f} s"
        if s.progress is not None:
            text += f" {bar(s.progress, 10)} {s.progress:.0%}"
        if model.paused and s.phase in ("ready", "generating"):
            text += " · paused" if s.phase == "generating" else ""
            if s.phase == "ready":
                text = "⏸ paused"
        colour = {"error": "error", "generating": "success", "ready": "primary"}.get(s.phase, "warning")
        return text, colour

    def render(self) -> Text:
        app = self.app
        v = palette(app)
        session = app.model.session
        model, device = session.model, session.device
        # (text, style, rank): on a narrow terminal the lowest ranks go first, so what is
        # measured (model, dtype, device, threads) outlives the details (layers, params, backend)
        parts: list[tuple[str, str, int]] = [("llmtop ", f"bold {v['primary']}", 9)]
        if app.replay is not None:   # a replayed session must not pass for a live one
            parts.append(("REPLAY ", f"bold reverse {v['warning']}", 9))
        if app.attached is not None:   # someone else's server, not llmtop's engine
            parts.append((f"ATTACHED {app.attached} ", f"bold reverse {v['accent']}", 9))
        sep = (" │ ", v.get("secondary", v["foreground"]))
        if app.attached is not None:
            if model is not None and device is not None:
                parts.append((model.name, "bold", 9))
                parts.append((sep[0] + device.name, "", 7))
            else:
                parts.append(("connecting", "bold", 9))
        elif model is not None:
            parts.append((model.name, "bold", 9))
            if model.synthetic:
                parts.append((" (synthetic weights)", v["warning"], 8))
            if model.params:   # an attached server's replayed session does not know them
                parts.append((sep[0] + (f"{model.params / 1e6:,.1f} M params" if model.params < 1e9
                                        else f"{model.params / 1e9:,.2f} B params"), "", 2))
                parts.append((f" · {model.layers} layers", "", 1))
            parts.append((sep[0] + model.dtype, "", 7))
            tp = session.config.tp if session.config else 1
            parts.append((sep[0] + model.device + (f" × tp {tp}" if tp and tp > 1 else ""), "", 7))
            if device is not None:
                parts.append((f" ({device.name})", "", 3))
            if device is not None and device.threads and (model.device == "cpu" or device.threads_note):
                parts.append((f" · {device.threads} of {device.cpus} threads",
                              v["warning"] if device.threads_note else "", 6))
        else:
            want = app.model.desired
            name = "the embedded SmolLM2-135M" if want.model == "embedded" else want.model
            where = "the best device here" if want.device == "auto" else want.device
            parts.append((f"starting {name} on {where}", "bold", 9))
        opts = session.config.opts if session.config else {}
        if opts:
            parts.append((sep[0] + f"backend {opts.get('backend', 'hf')}", "", 4))
        phase, colour = self.phase_text()
        right = Text(phase, style=f"bold {v[colour]}", no_wrap=True)
        width = self.content_size.width or 158
        room = width - right.cell_len - 1
        while sum(len(t) for t, _, _ in parts) > room and min(r for _, _, r in parts) < 9:
            lowest = min(r for _, _, r in parts)
            parts = [p for p in parts if p[2] != lowest]
        line = Text(no_wrap=True, overflow="ellipsis")
        for text, style, _ in parts:
            if text.startswith(sep[0]):
                line.append(*sep)
                text = text[len(sep[0]):]
            line.append(text, style=style)
        pad = max(1, width - line.cell_len - right.cell_len)
        if line.cell_len + right.cell_len + 1 > width:
            line.truncate(max(0, width - right.cell_len - 1), overflow="ellipsis")
            pad = max(1, width - line.cell_len - right.cell_len)
        line.append(" " * pad)
        line.append_text(right)

        badges = Text(no_wrap=True, overflow="ellipsis")
        status = session.status   # a (re)load's step, in its own words, while the bar above runs
        step = status.detail if status.progress is not None and status.phase != "ready" else ""
        if opts:
            shown = [f"{axis} {opts[axis]}" for axis in AXIS_ORDER if axis in opts and axis != "backend"]
            pad = " " if sum(len(b) + 3 for b in shown) <= width else ""  # narrow: badges touch less
            for badge in shown:
                badges.append(f"{pad}{badge}{pad}", style=f"{v['foreground']} on {v['primary-muted']}"
                              if "primary-muted" in v else f"reverse {v['primary']}")
                badges.append(" ")
        if step:
            badges.append(f"{'· ' if opts else ''}{step}", style=v["warning"])
        elif not opts:
            badges.append("no configuration applied yet", style="dim")
        pending = app.model.pending_changes()
        if pending:
            badges.append(" next run: " + " ".join(pending) + " ", style=f"bold {v['accent']}")
        note = f" {device.threads_note}" if device is not None and device.threads_note else ""
        if note and badges.cell_len + len(note) <= width:  # else line 1's "1 of 2 threads" says it
            badges.append(note, style=v["warning"])
        line.append("\n")
        line.append_text(badges)
        return line

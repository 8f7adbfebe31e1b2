"""Token stream: each run's prompt, then its text as it arrives, each token coloured by its latency."""

from __future__ import annotations

import statistics

from rich.text import Text
from textual.widget import Widget

from ..state import Run, latency_class
from .base import Coalesced, palette

RUNS_SHOWN = 12


def run_text(run: Run, colours: dict[str, str]) -> Text:
    """One run as Rich text: dim prompt, tokens coloured ok / slow / spike, TTFT token marked."""
    text = Text()
    text.append(f"#{run.run_id} ", style=colours["muted"])
    if run.batch > 1:
        text.append(f"(request 1 of {run.batch}) ", style=colours["muted"])
    text.append(run.prompt, style=f"italic {colours['muted']}")
    if run.chat:   # an answer, not a continuation: on its own line
        text.append("\n→ ", style=colours["muted"])
    lats = run.latencies_ms()
    gaps = lats[1:]
    median = statistics.median(gaps) if gaps else 0.0
    for i, piece in enumerate(run.texts):
        if i == 0:
            style = f"bold {colours['ttft']}"
        else:
            kind = latency_class(lats[i], median) if i < len(lats) else "ok"
            style = {"ok": colours["ok"], "slow": colours["slow"],
                     "spike": f"bold {colours['spike']}"}[kind]
        text.append(piece, style=style)
    if run.record is not None:
        mt = run.record["metrics"]
        tpot = f" · TPOT {mt['tpot_ms']:.1f} ms" if mt["n_tokens"] > 1 else ""
        end = f"  ⏱ {mt['n_tokens']} tok · TTFT {mt['ttft_ms']:.1f} ms{tpot}"
        stopped = run.record.get("stopped")
        if stopped:
            end += f" · stopped ({stopped})"
        text.append(end, style=colours["muted"])
    elif run.error:
        text.append(f"  ✖ {run.error}", style=colours["spike"])
    else:
        text.append("▌", style=colours["ttft"])
    return text


class TokenStream(Widget, Coalesced):
    """The newest text at the bottom, like a terminal: the widget renders the tail that fits.

    Rendering only what fits (instead of a growing scrollable document) keeps each redraw a
    repaint of this widget alone, with no layout pass over the whole screen. Every run's full
    text is in the saved session.
    """

    interval = 0.15
    watches = ("tokens", "runs", "status")
    MIN_ROWS = 5   # border and three lines: one run's text stays readable
    DEFAULT_CSS = """
    TokenStream { height: 1fr; border: round $primary 50%; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "tokens"
        self.border_subtitle = ("[$accent]first token[/] · normal · [$warning]≥1.3× median[/]"
                                " · [$error]≥2× median[/]")

    def colours(self) -> dict[str, str]:
        v = palette(self.app)
        return {"ok": v["foreground"], "slow": v["warning"], "spike": v["error"], "ttft": v["accent"],
                "muted": v.get("foreground-muted", v.get("secondary", v["foreground"]))}

    def redraw_now(self) -> None:
        self.refresh()

    def render(self) -> Text:
        """The last lines that fit. Finished runs are wrapped once per width and theme (cached);
        only the streaming run is wrapped again on each frame."""
        session = self.app.model.session
        width, height = self.content_size.width, self.content_size.height
        colours = self.colours()
        runs = [r for r in session.runs if r.stamps or not r.done][-RUNS_SHOWN:]
        if not runs:
            out = Text("waiting for the first run: ", style=colours["muted"])
            out.append(session.status.detail or session.status.phase, style=colours["muted"])
            return out
        if width <= 0 or height <= 0:
            return run_text(runs[-1], colours)
        key = (width, self.app.theme)
        cache = self._wrapped if getattr(self, "_wrapped_key", None) == key else {}
        self._wrapped, self._wrapped_key = cache, key
        lines: list[Text] = []
        for run in reversed(runs):  # newest first, until the widget is full
            wrapped = cache.get(id(run)) if run.done else None
            if wrapped is None:
                wrapped = list(run_text(run, colours).wrap(self.app.console, width))
                if run.done:
                    cache[id(run)] = wrapped
            lines[:0] = wrapped + ([Text("")] if lines else [])
            if len(lines) >= height:
                break
        live = {id(r) for r in runs}
        for stale in [k for k in cache if k not in live]:
            del cache[stale]
        return Text("\n").join(lines[-height:])

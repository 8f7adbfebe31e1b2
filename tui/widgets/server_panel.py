"""Server: what `llmtop attach` is attached to (kind, API, model, URL) and its own Prometheus
/metrics gauges, live (engine/endpoint/prom.py reads them; ServerMetrics events bring them).

Only shown when attached (the App hides it otherwise). The server's configuration is its own,
so the optimizations below it are read-only; a server without /metrics we know says so.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..analysis import num
from .base import Coalesced, palette, update_static

# llmtop's gauge names (prom.GAUGES) as the panel words them
LABELS = {"running": "running requests", "waiting": "waiting requests",
          "kv_cache_usage": "KV-cache usage", "batch_size": "batch size",
          "batch_max_tokens": "batch max tokens"}


def reading_text(name: str, value: float) -> str:
    return f"{value:.0%}" if name == "kv_cache_usage" else num(value, 0)


class ServerPanel(Static, Coalesced):
    watches = ("server", "model", "device", "status")
    DEFAULT_CSS = """
    ServerPanel { height: auto; padding: 0 1; border: round $primary 50%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "server"

    def on_mount(self) -> None:
        self.redraw_now()

    def redraw_now(self) -> None:
        session = self.app.model.session
        v = palette(self.app)
        text = Text()
        url = self.app.attached or ""
        if session.model is None or session.device is None:
            text.append(f"connecting to {url}", style="dim")
            update_static(self, text)
            return
        for label, value in (("server", session.device.name), ("model", session.model.name),
                             ("URL", session.model.source)):
            text.append(f"{label:<8}", style="bold")
            text.append(value + "\n")
        text.append("options  ", style="bold")
        text.append(self.app.model.fixed() or "", style="italic dim")
        readings = session.server_metrics
        text.append("\n/metrics ", style="bold")
        if not readings:
            text.append("none read: the server publishes none of the gauges llmtop knows "
                        "(vLLM, SGLang, TGI)", style="dim")
        else:
            last = readings[-1]
            peak = {k: max(r.values.get(k, 0.0) for r in readings) for k in last.values}
            for name, value in last.values.items():
                text.append(f"\n  {LABELS.get(name, name):<18}")
                text.append(f"{reading_text(name, value):>6}", style=f"bold {v['primary']}")
                text.append(f"  peak {reading_text(name, peak[name])}", style="dim")
        update_static(self, text)

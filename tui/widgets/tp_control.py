"""Tensor-parallel size: how many ranks the model is split over, chosen like an optimization.

The sizes come from what the engine reported: the model's attention and KV head counts
(ModelInfo; tensor parallelism splits whole heads) and how many GPUs torch sees (DeviceInfo).
On a CPU the ranks run over gloo and share the cores, so 1 and 2 are offered. A choice is a
reconfiguration like any other: it applies between runs (the model reloads, sharded).
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Label
from textual.widgets.option_list import Option

from .axis_list import AxisList
from .base import Coalesced, palette


class TpControl(Vertical, Coalesced):
    """The tp sizes as an option list: ● applied, ◆ next run, ✗ cannot run (reason shown)."""

    skip_hidden = True
    watches = ("config", "model", "device")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._sizes: list[int] = []

    def compose(self):
        yield Label("tp · tensor-parallel ranks (the model splits over them)", classes="axis-label")
        yield AxisList(Option("… waiting for the engine to report the model", id="tp=wait",
                              disabled=True), id="opt-tp", compact=True)

    def on_mount(self) -> None:
        self.redraw_now()

    def redraw_now(self) -> None:
        model = self.app.model
        v = palette(self.app)
        ol = self.query_one("#opt-tp", AxisList)
        choices = model.tp_choices()
        if not choices:
            return
        sizes = [n for n, _, _ in choices]
        if sizes != self._sizes:
            ol.clear_options()
            ol.add_options([Option(str(n), id=f"tp={n}") for n in sizes])
            self._sizes = sizes
        applied = model.applied.tp if model.applied else 1
        wanted = model.desired.tp
        for n, ok, reason in choices:
            prompt = Text(no_wrap=False)
            if not ok:
                prompt.append("✗ ", style=v["error"])
                prompt.append(str(n), style="strike")
            elif n == applied and n == wanted:
                prompt.append("● ", style=v["success"])
                prompt.append(str(n), style="bold")
            elif n == wanted:
                prompt.append("◆ ", style=v["accent"])
                prompt.append(str(n), style=f"bold {v['accent']}")
                prompt.append("  next run", style=v["accent"])
            elif n == applied:
                prompt.append("◌ ", style=v["secondary"])
                prompt.append(str(n))
                prompt.append("  until this run ends", style="dim")
            else:
                prompt.append("○ ", style="dim")
                prompt.append(str(n))
            if reason:
                prompt.append(f"  {reason}", style="italic dim")
            oid = f"tp={n}"
            ol.replace_option_prompt(oid, prompt)
            ol.set_enabled(oid, ok)

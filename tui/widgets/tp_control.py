"""Tensor-parallel size: how many ranks the model is split over, chosen like an optimization.

The sizes come from what the engine reported: the model's attention and KV head counts
(ModelInfo; tensor parallelism splits whole heads) and how many GPUs torch sees (DeviceInfo).
On a CPU the ranks run over gloo and share the cores, so 1 and 2 are offered. A choice is a
reconfiguration like any other: it applies between runs (the model reloads, sharded).
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.containers import Vertical
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from .base import Coalesced, palette

CPU_RANKS = 2    # gloo ranks on a CPU share its cores: more only slows each step further


def tp_choices(heads: int, kv_heads: int, device: str, gpu_count: int) -> list[tuple[int, bool, str]]:
    """(size, can run, why not) for each size worth showing: every size that splits the heads
    and fits the devices, and the powers of two up to the device count that do not (greyed,
    with the reason), so the user sees why 2 is missing on a 9-head model."""
    on_gpu = device.startswith("cuda")
    limit = gpu_count if on_gpu else CPU_RANKS
    limit = max(limit, 1)
    g = math.gcd(heads, kv_heads) if heads and kv_heads else 1
    sizes = {d for d in range(1, limit + 1) if g % d == 0}
    k = 2
    while k <= limit:
        sizes.add(k)
        k *= 2
    out = []
    for n in sorted(sizes):
        if g % n:
            out.append((n, False, f"does not divide {heads} attention heads and {kv_heads} KV heads"))
        elif n > 1 and not on_gpu and gpu_count > 0:
            out.append((n, False, "on a CPU only where torch sees no GPU: use device cuda"))
        elif n > 1 and not on_gpu:
            out.append((n, True, "gloo ranks sharing the CPU cores"))
        elif n > 1:
            out.append((n, True, f"{n} of the {gpu_count} GPUs, NCCL"))
        else:
            out.append((n, True, ""))
    return out


class TpControl(Vertical, Coalesced):
    """The tp sizes as an option list: ● applied, ◆ next run, ✗ cannot run (reason shown)."""

    skip_hidden = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._sizes: list[int] = []

    def compose(self):
        yield Label("tp · tensor-parallel ranks (the model splits over them)", classes="axis-label")
        yield OptionList(Option("waiting for the engine to report the model", id="tp=wait",
                                disabled=True), id="opt-tp", compact=True)

    def on_mount(self) -> None:
        self.redraw_now()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()   # the optimizations panel around us handles only catalogue axes
        _, _, size = (event.option_id or "").partition("=")
        if size.isdigit():
            self.app.select_tp(int(size))

    def redraw_now(self) -> None:
        app = self.app
        v = palette(app)
        ol = self.query_one("#opt-tp", OptionList)
        choices = app.tp_choices()
        if not choices:
            return
        sizes = [n for n, _, _ in choices]
        if sizes != self._sizes:
            ol.clear_options()
            ol.add_options([Option(str(n), id=f"tp={n}") for n in sizes])
            self._sizes = sizes
        applied = app.session.config.tp if app.session.config else 1
        wanted = app.desired.tp
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
            (ol.enable_option if ok else ol.disable_option)(oid)

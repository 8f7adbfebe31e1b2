"""A workaround for a Textual cache that keeps every widget's rendered lines (issue 14.10).

textual._styles_cache.StylesCache.get_inner_outer is an lru_cache(1024) on an instance method:
its key holds the StylesCache, so the 1024 latest (widget, colours) pairs keep their widgets'
StylesCache alive, each with its cache of rendered lines (Strips). Every toast, command palette
and help screen the dashboard opened stayed in memory that way, and every theme change added
an entry per widget: the UI grew by ~1 MB a minute in a 20-minute soak (benchmarks/tui_soak.py,
benchmarks/tui_memory.py). The result depends only on the two colours, so the cache is keyed
on them alone here.
"""

from __future__ import annotations

from functools import lru_cache

from textual._styles_cache import StylesCache
from textual.color import Color
from textual.style import Style


@lru_cache(1024)
def _inner_outer(base_background: Color, background: Color) -> tuple[Style, Style]:
    return Style(background=base_background + background), Style(background=base_background)


def keyed_on_colours(_self: StylesCache, base_background: Color, background: Color) -> tuple[Style, Style]:
    """StylesCache.get_inner_outer without the StylesCache in the cache's key."""
    return _inner_outer(base_background, background)


def apply() -> None:
    """Installs the workaround (idempotent); the App calls it at import."""
    StylesCache.get_inner_outer = keyed_on_colours

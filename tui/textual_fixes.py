"""Workarounds for three Textual defects: two caches that keep what they should not (issue
14.10), and a command palette that a double Enter closes twice (the app dies).

textual._styles_cache.StylesCache.get_inner_outer is an lru_cache(1024) on an instance method:
its key holds the StylesCache, so the 1024 latest (widget, colours) pairs keep their widgets'
StylesCache alive, each with its cache of rendered lines (Strips). Every toast, command palette
and help screen the dashboard opened stayed in memory that way, and every theme change added
an entry per widget: the UI grew by ~1 MB a minute in a 20-minute soak (benchmarks/tui_soak.py,
benchmarks/tui_memory.py). The result depends only on the two colours, so the cache is keyed
on them alone here.

textual.strip.Strip.render_ansi is an lru_cache(16384) keyed on a Rich style, and every
segment Textual renders carries a style of its own: its meta holds the segment's screen offset
(for text selection). So the cache fills with one entry per style and position that ever was
on screen, each keeping its Style, the pickled meta and a link id: the UI grew ~0.6 MB a
minute for 20 minutes of a soak and more at larger sizes (the traced soak: Strip.render_ansi,
rich/style.py and textual/style.py among the sites that grew most). The escape codes depend on
the colours and attributes alone, so the cache is keyed on those here.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

from textual._styles_cache import StylesCache
from textual.await_complete import AwaitComplete
from textual.cache import LRUCache
from textual.command import CommandPalette
from textual.color import Color
from textual.strip import Strip
from textual.style import Style


@lru_cache(1024)
def _inner_outer(base_background: Color, background: Color) -> tuple[Style, Style]:
    return Style(background=base_background + background), Style(background=base_background)


def keyed_on_colours(_self: StylesCache, base_background: Color, background: Color) -> tuple[Style, Style]:
    """StylesCache.get_inner_outer without the StylesCache in the cache's key."""
    return _inner_outer(base_background, background)


_render_ansi = Strip.__dict__["render_ansi"].__func__
_render_ansi = getattr(_render_ansi, "__wrapped__", _render_ansi)   # Textual's, uncached
_ANSI: LRUCache[tuple, str] = LRUCache(1024)


def ansi_keyed_on_colours(cls: type, style: Any, color_system: Any) -> str:
    """Strip.render_ansi cached on what the codes depend on (colours, attributes, colour
    system), so no style is kept alive by the cache."""
    key = (style._color, style._bgcolor, style._attributes & style._set_attributes, color_system)
    ansi = _ANSI.get(key)
    if ansi is None:
        ansi = _ANSI[key] = _render_ansi(cls, style, color_system)
    style._ansi = ansi
    return ansi


def apply() -> None:
    """Installs the workarounds (idempotent); the App calls it at import."""
    StylesCache.get_inner_outer = keyed_on_colours
    Strip.render_ansi = classmethod(ansi_keyed_on_colours)


def _nothing() -> None:
    pass


class OncePalette(CommandPalette):
    """Textual's command palette, closed once. Two Enters that reach it before the first one's
    selection has landed (a burst from the terminal, a double press) each select the command
    and each dismiss the palette; the second pops the dashboard's own screen and the app dies
    with ScreenStackError (Textual 8.2.8: seen in a soak, then at once in tmux by sending Enter
    twice). Here the second is ignored, its run of the command included."""

    _closing_once = False   # (MessagePump has its own _closed)

    def dismiss(self, result: Any = None) -> AwaitComplete:
        if self._closing_once:
            if self._selected_command is not None:   # the palette runs it right after this
                self._selected_command = replace(self._selected_command, command=_nothing)
            return AwaitComplete.nothing()
        self._closing_once = True
        return super().dismiss(result)

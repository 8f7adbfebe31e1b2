"""Redraw on new data, at most `interval` apart: a burst of tokens costs one frame, not fifty."""

from __future__ import annotations

import time


class Coalesced:
    """Mixin for widgets: `changed()` when data changes; `redraw_now()` does the work.

    A widget names the model topics it shows in `watches` (tui/model.py TOPICS); it watches the
    App's reactive counter of each and calls `changed()` itself, so nobody wires redraws by hand.

    The first change after a quiet spell redraws at once; changes inside `interval` of the
    last redraw are folded into one timer, so the UI's cost follows the frame rate, not the
    token rate (a 5 ms/token GPU would otherwise ask for 200 redraws a second). A widget with
    `skip_hidden` (panels on a hidden tab) only notes that it is stale, and redraws when shown.
    """

    interval: float = 1 / 15
    skip_hidden: bool = False
    watches: tuple[str, ...] = ()
    _last_redraw: float = 0.0
    _redraw_pending: bool = False
    _stale: bool = False

    def on_mount(self) -> None:
        # Textual runs every class's on_mount in the MRO, the widget's own as well as this one
        for topic in self.watches:
            self.watch(self.app, f"v_{topic}", self._topic_changed, init=False)  # type: ignore[attr-defined]

    def _topic_changed(self, _version: int) -> None:
        self.changed()

    def changed(self) -> None:
        if self._redraw_pending:
            return
        wait = self._last_redraw + self.interval - time.monotonic()
        if wait <= 0:
            self._do_redraw()
        else:
            self._redraw_pending = True
            self.set_timer(wait, self._do_redraw)  # type: ignore[attr-defined]

    def _do_redraw(self) -> None:
        self._redraw_pending = False
        if not self.is_mounted:  # type: ignore[attr-defined]
            return
        if self.skip_hidden and not self.region.area:  # type: ignore[attr-defined]
            self._stale = True
            return
        self._last_redraw = time.monotonic()
        self._stale = False
        self.redraw_now()

    def on_show(self) -> None:
        if self._stale:
            self._stale = False
            self.redraw_now()

    def redraw_now(self) -> None:
        raise NotImplementedError


def update_static(widget, content, lines: int | None = None) -> None:
    """Static.update, asking for a layout pass only when the number of lines changed."""
    if lines is None:
        plain = getattr(content, "plain", None)
        lines = plain.count("\n") + 1 if plain is not None else -1
    layout = lines != getattr(widget, "_llmtop_lines", None) or lines < 0
    widget._llmtop_lines = lines
    widget.update(content, layout=layout)


_PALETTES: dict[str, dict[str, str]] = {}


def palette(app) -> dict[str, str]:
    """The theme's colour variables as plain #rrggbb (alpha blended onto the background),
    which Rich styles accept; cached per theme. Built from the theme itself, not from
    app.theme_variables: those are refreshed a frame after the theme changes, and a redraw in
    between would cache the previous theme's colours under the new name (issue 14.9)."""
    key = app.theme
    if key not in _PALETTES:
        from textual.color import Color

        theme = app.current_theme
        variables = {**app.get_theme_variable_defaults(), **theme.to_color_system().generate(),
                     **theme.variables}
        bg = Color.parse(variables.get("background", "#000000"))
        out = {}
        for name, value in variables.items():
            try:
                c = Color.parse(value)
            except Exception:
                continue
            if c.a < 1:
                c = bg + c
            out[name] = c.hex6
        _PALETTES[key] = out
    return _PALETTES[key]


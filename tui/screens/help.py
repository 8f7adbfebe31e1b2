"""Help: every key the dashboard answers to, read from the bindings themselves (never stale)."""

from __future__ import annotations

from rich import box
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static
from ..widgets.base import palette

# keys that belong to widgets rather than the app, described where they apply
WIDGET_KEYS = (
    ("↑ ↓ enter", "optimizations tab", "move between options; enter picks one for the next run"),
    ("enter", "comparison table", "make the highlighted configuration the baseline"),
    ("tab / shift+tab", "anywhere", "move focus between panels and fields"),
    ("escape", "this screen, palette, profile", "close"),
)


def key_label(app, binding: Binding) -> str:
    return ", ".join(app.get_key_display(Binding(k.strip(), "")) for k in binding.key.split(","))


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; max-width: 95%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        app = self.app
        v = palette(app)
        table = Table(box=box.SIMPLE_HEAD, expand=True, header_style=f"bold {v['primary']}")
        table.add_column("key", style=f"bold {v['accent']}", no_wrap=True)
        table.add_column("does")
        for binding in app.help_bindings():
            table.add_row(key_label(app, binding), binding.tooltip or binding.description)
        widget = Table(box=box.SIMPLE_HEAD, expand=True, header_style=f"bold {v['primary']}")
        widget.add_column("key", style=f"bold {v['accent']}", no_wrap=True)
        widget.add_column("where", no_wrap=True)
        widget.add_column("does")
        for row in WIDGET_KEYS:
            widget.add_row(*row)
        with VerticalScroll():
            yield Static(f"[b]llmtop keys[/b]  ·  the command palette ({app.get_key_display(Binding('ctrl+p', ''))}) "
                         "has an entry for every optimization, theme and action", markup=True)
            yield Static(table)
            yield Static(widget)

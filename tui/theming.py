"""Theme files (TOML) into Textual themes: the ones shipped in llmtop.themes, and the user's.

A theme file holds `name`, `dark`, a `[colors]` table (primary, secondary, accent, foreground,
background, surface, panel, boost, success, warning, error) and an optional `[variables]`
table of Textual design variables. Users drop their own into ~/.config/llmtop/themes/
(or $XDG_CONFIG_HOME/llmtop/themes/); a broken file is reported, never fatal.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

from textual.theme import BUILTIN_THEMES, Theme

DEFAULT_THEME = "llmtop-dark"
COLOR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
              "boost", "success", "warning", "error")


class ThemeError(ValueError):
    """A theme file that cannot be used; the message is one line naming the file."""


def user_theme_dir() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(root) / "llmtop" / "themes"


def parse_theme(text: str, origin: str) -> Theme:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ThemeError(f"{origin}: not valid TOML ({e})") from None
    name = data.get("name") or Path(origin).stem
    colors = data.get("colors", {})
    if not isinstance(colors, dict) or "primary" not in colors:
        raise ThemeError(f"{origin}: a [colors] table with at least 'primary' is required")
    unknown = set(colors) - set(COLOR_KEYS)
    if unknown:
        raise ThemeError(f"{origin}: unknown colour(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(COLOR_KEYS)}")
    from textual.color import Color, ColorParseError

    for key, value in colors.items():
        try:
            Color.parse(value)
        except ColorParseError:
            raise ThemeError(f"{origin}: {key} = {value!r} is not a colour") from None
    variables = {str(k): str(v) for k, v in data.get("variables", {}).items()}
    extra = {k: data[k] for k in ("luminosity_spread", "text_alpha") if k in data}
    return Theme(name=str(name), dark=bool(data.get("dark", True)), variables=variables,
                 **colors, **extra)


def load_theme_file(path: str | Path) -> Theme:
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise ThemeError(f"{path}: {e.strerror or e}") from None
    return parse_theme(text, str(path))


def builtin_themes() -> dict[str, Theme]:
    """The themes shipped in llmtop.themes, by name."""
    out = {}
    for entry in sorted(resources.files("llmtop.themes").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            theme = parse_theme(entry.read_text(), entry.name)
            out[theme.name] = theme
    return out


def user_themes() -> tuple[dict[str, Theme], list[str]]:
    """The user's themes and one line per file that could not be loaded."""
    out, problems = {}, []
    folder = user_theme_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            try:
                theme = load_theme_file(path)
            except ThemeError as e:
                problems.append(str(e))
                continue
            out[theme.name] = theme
    return out, problems


def resolve(name: str | None, known: dict[str, Theme]) -> tuple[str, Theme | None]:
    """The theme a --theme value means: a known name, 'dark' for 'llmtop-dark', or a file path.

    Returns (name, theme to register or None when already known); ThemeError if unknown.
    """
    if not name:
        return DEFAULT_THEME, None
    if name in known or name in BUILTIN_THEMES:
        return name, None
    if f"llmtop-{name}" in known:
        return f"llmtop-{name}", None
    if name.endswith(".toml") or os.sep in name:
        theme = load_theme_file(name)
        return theme.name, theme
    choices = sorted(known) + ["(or any Textual theme, or a .toml file)"]
    raise ThemeError(f"unknown theme {name!r}; choose one of: {', '.join(choices)}")

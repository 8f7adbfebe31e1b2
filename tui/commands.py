"""The command palette's entries: every optimization, preset, tp size, theme and action by name."""

from __future__ import annotations

from typing import Any, Iterable

from textual.app import SystemCommand

from llmtop.engine import catalogue


def palette_commands(app: Any) -> Iterable[SystemCommand]:
    model = app.model
    for axis, options in catalogue.AXES.items():
        for name in options:
            ok, reason = model.option_state(axis, name)
            help_text = ("apply from the next run" + (f" ({reason})" if reason else "")
                         if ok else f"unavailable: {reason}")
            if model.waiting_for_device():
                help_text = "apply from the next run (checked once the engine reports the device)"
            yield SystemCommand(f"Optimization: {axis} = {name}", help_text,
                                lambda a=axis, n=name: model.select_option(a, n))
    for preset, opts in catalogue.PRESETS.items():
        yield SystemCommand(f"Preset: {preset}", " ".join(f"{a}={v}" for a, v in opts.items()),
                            lambda p=preset: model.apply_preset(p))
    for binding in app.help_bindings():
        if binding.action in ("command_palette", "help", "quit") or "(" in binding.action:
            continue
        yield SystemCommand(binding.description if binding.action != "next_theme" else "Next theme",
                            binding.tooltip or binding.description,
                            lambda a=binding.action: app.run_action(a))
    yield SystemCommand("Sampling on/off", "toggle sampling (greedy when off) from the next run",
                        app.action_toggle_sampling)
    for n, ok, why in model.tp_choices():
        yield SystemCommand(f"Tensor parallel: tp = {n}",
                            ("apply from the next run (reloads)" + (f": {why}" if why else ""))
                            if ok else f"unavailable: {why}",
                            lambda n=n: model.select_tp(n))
    for name in app.llmtop_themes:
        yield SystemCommand(f"Theme: {name}", "switch theme", lambda n=name: setattr(app, "theme", n))
    for i, panel in enumerate(app.MAXIMIZABLE, 1):
        yield SystemCommand(f"Maximise: {panel}", f"key {i}; Esc restores",
                            lambda i=i: app.action_maximize_panel(i))

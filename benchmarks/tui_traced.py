"""The real `llmtop` command under tracemalloc, for finding what grows in the UI process of a
live session (issue 14.10): the pilot driver (tui_memory.py) stays flat, so the growth comes
from parts only a real session has (the engine's event thread, telemetry, the terminal).

    .venv/bin/python benchmarks/tui_traced.py DIR [llmtop arguments...]

Each SIGUSR2 writes DIR/snapshot-N.pickle (N = 1, 2, ...); tui_soak.py --trace sends one at
minute 2 and one at the end and prints the allocation sites that grew between them:

    .venv/bin/python benchmarks/tui_traced.py --compare DIR/snapshot-1.pickle DIR/snapshot-2.pickle

tracemalloc slows the UI (~2x) and its own bookkeeping counts in the RSS: compare the traced
sizes it prints, not the RSS of a traced run.
"""

from __future__ import annotations

import gc
import itertools
import signal
import sys
import tracemalloc
from pathlib import Path

FRAMES = 12


def compare(before: str, after: str, top: int = 25) -> None:
    """The sites (grouped by their innermost llmtop or library frame) that grew most."""
    a = tracemalloc.Snapshot.load(before)
    b = tracemalloc.Snapshot.load(after)
    total_a = sum(s.size for s in a.statistics("filename"))
    total_b = sum(s.size for s in b.statistics("filename"))
    print(f"traced: {total_a / 2**20:.1f} MB -> {total_b / 2**20:.1f} MB "
          f"({(total_b - total_a) / 2**20:+.1f} MB)")
    for stat in b.compare_to(a, "traceback")[:top]:
        if stat.size_diff <= 0:
            break
        print(f"\n{stat.size_diff / 2**10:+9.1f} KiB  {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format(limit=FRAMES, most_recent_first=True)[:2 * 6]:
            print("    " + line)


def main() -> int:
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2], sys.argv[3])
        return 0
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    counter = itertools.count(1)

    def dump(signum, frame) -> None:
        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"snapshot-{next(counter)}.pickle"))

    signal.signal(signal.SIGUSR2, dump)
    tracemalloc.start(FRAMES)
    sys.argv = ["llmtop", *sys.argv[2:]]
    from llmtop.cli import main as llmtop_main
    return llmtop_main()


if __name__ == "__main__":
    sys.exit(main())

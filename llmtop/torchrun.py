"""`torchrun [its options] -m llmtop.torchrun run --headless --tp N ...`: ranks across nodes.

torchrun's rank 0 runs the llmtop command as usual; the engine it starts joins the group
through torchrun's env:// store. Every other rank runs the engine's follower loop on
LOCAL_RANK's GPU. This entry lives with the commands because rank 0 *is* the command line;
the engine below it never imports the CLI.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print("llmtop.torchrun: run me under torchrun (it sets RANK and WORLD_SIZE)", file=sys.stderr)
        return 2
    if int(os.environ["RANK"]) == 0:
        from llmtop.cli import main as cli_main
        from llmtop.engine.tp_placement import EXTERNAL_ENV

        os.environ[EXTERNAL_ENV] = "1"
        return cli_main(argv if argv is not None else sys.argv[1:])
    from llmtop.engine.tp import follower_from_env

    follower_from_env()
    return 0


if __name__ == "__main__":
    sys.exit(main())

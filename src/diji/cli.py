"""The `diji` command line: parses arguments, then calls the library — one command module per stage.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on each. Modules are imported when the parser is built, never at `import diji`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from diji import __version__
from diji.errors import DijiError

# One module per stage; each adds its own sub-commands.
COMMAND_MODULES = (
    "diji.compute.commands",
    "diji.data.commands",
    "diji.model.commands",
    "diji.train.commands",
    "diji.serve.commands",
    "diji.serve.chat_cli",
    "diji.observe.commands",
    "diji.eval.commands",
    "diji.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diji", description="地基 — build your own language models end to end, on your own hardware."
    )
    parser.add_argument("--version", action="version", version=f"diji {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DijiError as e:
        print(f"diji: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diji: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # last line of defence: one line, full trace only on request
        if os.environ.get("DIJI_DEBUG"):
            raise
        print(f"diji: internal error: {type(e).__name__}: {e} (set DIJI_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

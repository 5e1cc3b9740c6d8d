"""The `diji` command line: parses arguments, then calls the library — one command module per stage.

Each module in COMMAND_MODULES has `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on each. Modules are imported when the parser is built, never at `import diji`.

One grammar for every command: `--input` for what is read, `--out` for what is written, `--json` for
machine-readable output, `--quiet` for no progress; an old spelling stays as a hidden alias for one
release (`hidden_alias`). A group called without its sub-command prints its help and exits 2, and every
option's help shows its default.
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
    "diji.config_cli",
    "diji.deploy_commands",
)


class HelpFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to an option's help unless the text already names its default or there is
    nothing to show (a flag, an unset option)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.help == argparse.SUPPRESS or not action.option_strings:
            return text
        if action.default in (None, False, [], "", argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def hidden_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs) -> None:
    """Accept an old spelling of an option for one release, without listing it in --help."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def subparser_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def walk_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the root and every sub-command, depth first."""
    yield path, parser
    for action in subparser_actions(parser):
        seen: set[int] = set()
        for name, child in action.choices.items():
            if id(child) not in seen:  # aliases map several names to one parser
                seen.add(id(child))
                yield from walk_parsers(child, (*path, name))


def _group_help(parser: argparse.ArgumentParser):
    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diji", description="地基 — build your own language models end to end, on your own hardware."
    )
    parser.add_argument("--version", action="version", version=f"diji {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for _, p in walk_parsers(parser):
        p.formatter_class = HelpFormatter
        for action in subparser_actions(p):
            action.required = False  # a bare group prints its help (exit 2), not argparse's one-liner
            p.set_defaults(func=_group_help(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

"""Every sub-command's --help: each option has help text and shows its default; bare groups print help
and exit 2. The parser is walked in-process (one --help per sub-command, ~50 of them), plus a few real
`python -m diji ... --help` runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys

import pytest

from diji.cli import build_parser, main, subparser_actions, walk_parsers


def commands():
    return [(path, p) for path, p in walk_parsers(build_parser()) if path]


def missing_help() -> list[str]:
    """'diji CMD --option' for every option or positional without help text."""
    bad = []
    for path, parser in commands():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                continue
            if action.help == argparse.SUPPRESS:  # a hidden alias: deliberately undocumented
                continue
            if not (action.help or "").strip():
                name = "/".join(action.option_strings) or action.metavar or action.dest
                bad.append(f"diji {' '.join(path)} {name}")
    return bad


def test_every_option_has_help_text():
    bad = missing_help()
    assert not bad, f"{len(bad)} options without help text:\n" + "\n".join(bad)


def test_every_sub_command_help_runs_and_shows_defaults():
    undocumented_defaults = []
    for path, parser in commands():
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0, path
        text = out.getvalue()
        assert text.startswith("usage: diji " + " ".join(path)), path
        for action in parser._actions:
            if not action.option_strings or action.help in (None, argparse.SUPPRESS) or action.nargs == 0:
                continue
            if action.default not in (None, False, [], "", argparse.SUPPRESS):
                rendered = parser.formatter_class(prog="x")._get_help_string(action)
                if "default" not in rendered:
                    undocumented_defaults.append(f"diji {' '.join(path)} {action.option_strings[0]}")
    assert not undocumented_defaults, undocumented_defaults


@pytest.mark.parametrize("group", [path for path, p in walk_parsers(build_parser()) if subparser_actions(p)])
def test_a_group_without_its_sub_command_prints_help_and_exits_2(group, capsys):
    assert main(list(group)) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: diji") and ("positional arguments" in err or "options" in err)


def test_real_help_runs():
    for args in (["--help"], ["train", "sft", "--help"], ["config", "show", "--help"], ["report", "--help"]):
        out = subprocess.run([sys.executable, "-m", "diji", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("usage: diji"), (args, out.stderr)
    sft = subprocess.run([sys.executable, "-m", "diji", "train", "sft", "--help"], capture_output=True, text=True,
                         timeout=120).stdout
    assert "--overwrite" in sft and "--quiet" in sft and "diji config show sft" in sft
    bare = subprocess.run([sys.executable, "-m", "diji", "data"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "usage: diji data" in bare.stderr


def test_hidden_alias_is_accepted_but_not_listed():
    parser = dict(walk_parsers(build_parser()))[("conformance",)]
    assert "--json-out" not in parser.format_help() and "--out" in parser.format_help()
    assert parser.parse_args(["--json-out", "x.json"]).out == "x.json"

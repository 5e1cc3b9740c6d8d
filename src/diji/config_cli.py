"""CLI: `diji config show STAGE` (the resolved TOML, each key's docstring as a comment) and
`diji config keys STAGE` (every key, its type, value and what it means)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

# The config dataclass of every command that reads a TOML file, as "module:Class" (imported on use).
STAGES = {
    "pretrain": "diji.train.config:PretrainConfig",
    "sft": "diji.train.sft:SFTConfig",
    "grpo": "diji.train.grpo:GRPOConfig",
    "data": "diji.data.prepare:DataConfig",
    "policy": "diji.safety.policy:Policy",
}


def stage_class(stage: str) -> type:
    module, _, name = STAGES[stage].partition(":")
    return getattr(importlib.import_module(module), name)


def resolve(stage: str, path: str | None, overrides: list[str]) -> tuple[Any, str]:
    """The stage's config from a file and overrides, and '' — or, when the top level's cross-field checks
    still fail (a required key left empty), the unchecked config and that check's message."""
    from diji.config import ConfigError, apply_overrides, build_unchecked, from_dict, read_toml

    cls = stage_class(stage)
    data = apply_overrides(read_toml(path) if path else {}, overrides, cls)
    try:
        return from_dict(cls, data), ""
    except ConfigError as e:
        return build_unchecked(cls, data), str(e)


def _show(args: argparse.Namespace) -> int:
    from diji.config import describe_toml

    cfg, problem = resolve(args.stage, args.config, args.set)
    header = f"# diji {args.stage} config, resolved" + (f" from {args.config}" if args.config else " (defaults)")
    print(header + "\n" + describe_toml(cfg), end="")
    if problem:  # on stderr, so that stdout stays a loadable TOML file
        print(f"diji: note: not yet a valid {args.stage} config: {problem}", file=sys.stderr)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from diji.config import config_keys

    cfg, _ = resolve(args.stage, args.config, args.set)
    keys = config_keys(cfg)
    if args.json:
        print(json.dumps([k.__dict__ for k in keys], ensure_ascii=False, indent=1))
        return 0
    width = max(len(k.key) for k in keys)
    for k in keys:
        summary = k.doc.splitlines()[0] if k.doc else ""
        print(f"{k.key:<{width}}  {json.dumps(k.value, ensure_ascii=False):<14} {k.type:<16} {summary}")
    return 0


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="discover a stage's config: every key, its default and meaning")
    csub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    for name, func, help_text in (
        ("show", _show, "print the resolved config as TOML, each key's docstring as a comment"),
        ("keys", _keys, "list every key (for --set) with its value, type and one-line meaning"),
    ):
        p = csub.add_parser(name, help=help_text)
        p.add_argument("stage", choices=sorted(STAGES), metavar="STAGE",
                       help=f"which config: {', '.join(STAGES)}")
        p.add_argument("--config", metavar="FILE", default=None, help="TOML file to start from (default: none)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key, e.g. --set run.name=try-1 (repeatable; default: none)")
        if name == "keys":
            p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
        p.set_defaults(func=func)

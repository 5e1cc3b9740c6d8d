"""CLI: `diji train pretrain|sft|grpo --config F [--set k=v ...] [--resume]`."""

from __future__ import annotations

import argparse
import json


def _pretrain(args: argparse.Namespace) -> int:
    from diji.config import load_config
    from diji.train.config import PretrainConfig
    from diji.train.pretrain import pretrain

    cfg = load_config(PretrainConfig, args.config, args.set)
    result = pretrain(cfg, resume=args.resume)
    print(json.dumps(result))
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TOML config (see examples/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model (pretrain, sft, grpo)")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    p = stages.add_parser("pretrain", help="next-token pretraining on a prepared data directory")
    _add_common(p)
    p.set_defaults(func=_pretrain)

"""CLI: `diji train pretrain|sft|grpo --config F [--set k=v ...] [--resume]` and `diji lora merge`."""

from __future__ import annotations

import argparse
import json
import os


def _pretrain(args: argparse.Namespace) -> int:
    from diji.config import load_config
    from diji.train.config import PretrainConfig
    from diji.train.pretrain import pretrain

    cfg = load_config(PretrainConfig, args.config, args.set)
    result = pretrain(cfg, resume=args.resume)
    _print_on_rank0(result)
    return 0


def _sft(args: argparse.Namespace) -> int:
    from diji.config import load_config
    from diji.train.sft import SFTConfig, sft

    result = sft(load_config(SFTConfig, args.config, args.set), resume=args.resume)
    _print_on_rank0(result)
    return 0


def _grpo(args: argparse.Namespace) -> int:
    from diji.config import load_config
    from diji.train.grpo import GRPOConfig, grpo

    result = grpo(load_config(GRPOConfig, args.config, args.set), resume=args.resume)
    _print_on_rank0(result)
    return 0


def _lora_merge(args: argparse.Namespace) -> int:
    from diji.train.lora import merge_checkpoint

    out = merge_checkpoint(args.adapter, args.out)
    print(json.dumps({"checkpoint": str(out.resolve())}))
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="TOML config (see examples/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")


def _print_on_rank0(result: dict) -> None:
    """Under torchrun every rank runs the command; only rank 0 reports (like its logs and checkpoints)."""
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result))


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model (pretrain, sft, grpo)")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    p = stages.add_parser("pretrain", help="next-token pretraining on a prepared data directory")
    _add_common(p)
    p.set_defaults(func=_pretrain)
    p = stages.add_parser("sft", help="supervised fine-tuning on conversations (full or LoRA)")
    _add_common(p)
    p.set_defaults(func=_sft)
    p = stages.add_parser("grpo", help="GRPO reinforcement learning with a task's verifier as reward")
    _add_common(p)
    p.set_defaults(func=_grpo)

    lora = sub.add_parser("lora", help="LoRA adapter tools")
    tools = lora.add_subparsers(dest="lora_command", metavar="COMMAND", required=True)
    p = tools.add_parser("merge", help="fold a LoRA adapter checkpoint into a plain checkpoint")
    p.add_argument("adapter", help="adapter checkpoint directory (from `diji train sft` with lora.rank > 0)")
    p.add_argument("--out", required=True, help="directory for the merged checkpoint")
    p.set_defaults(func=_lora_merge)

"""CLI: `diji train pretrain|sft|grpo [--config F] [--set k=v ...] [--resume | --overwrite]` and
`diji lora merge`."""

from __future__ import annotations

import argparse
import json
import os


def _stage(args: argparse.Namespace, module: str, cls_name: str, fn_name: str) -> int:
    """Load the stage's config, settle the run directory (--overwrite / --resume), train, report."""
    import importlib
    from pathlib import Path

    from diji.config import load_config
    from diji.train.loop import check_run_dir

    mod = importlib.import_module(module)
    overrides = [*args.set, *(["run.progress=false"] if args.quiet else [])]
    cfg = load_config(getattr(mod, cls_name), args.config, overrides)
    if args.resume and args.overwrite:
        check_run_dir(Path(cfg.run.out_dir) / cfg.run.name, {}, True, True)  # raises the one-line error
    if args.overwrite and os.environ.get("RANK", "0") == "0":
        check_run_dir(Path(cfg.run.out_dir) / cfg.run.name, {}, False, True)
    result = getattr(mod, fn_name)(cfg, resume=args.resume)
    _print_on_rank0(result)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    return _stage(args, "diji.train.pretrain", "PretrainConfig", "pretrain")


def _sft(args: argparse.Namespace) -> int:
    return _stage(args, "diji.train.sft", "SFTConfig", "sft")


def _grpo(args: argparse.Namespace) -> int:
    return _stage(args, "diji.train.grpo", "GRPOConfig", "grpo")


def _lora_merge(args: argparse.Namespace) -> int:
    from diji.train.lora import merge_checkpoint

    out = merge_checkpoint(args.adapter, args.out)
    print(json.dumps({"checkpoint": str(out.resolve())}))
    return 0


def _add_common(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", metavar="FILE", default=None,
                   help=f"TOML config, e.g. examples/{stage}.toml; `diji config show {stage}` prints every key "
                   "with its meaning (default: none, the stage's defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=100 --set run.name=try-2 "
                   "(repeatable; text needs no quotes; default: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its latest checkpoint (the config may change only the step "
                   "budget, device, process layout, progress and loggers)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the previous run's metrics and checkpoints in runs/<name>/ and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar (same as --set run.progress=false)")


def _print_on_rank0(result: dict) -> None:
    """Under torchrun every rank runs the command; only rank 0 reports (like its logs and checkpoints)."""
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result))


def register(sub) -> None:
    train = sub.add_parser("train", help="train a model (pretrain, sft, grpo)")
    stages = train.add_subparsers(dest="stage", metavar="STAGE")
    p = stages.add_parser("pretrain", help="next-token pretraining on a prepared data directory")
    _add_common(p, "pretrain")
    p.set_defaults(func=_pretrain)
    p = stages.add_parser("sft", help="supervised fine-tuning on conversations (full or LoRA)")
    _add_common(p, "sft")
    p.set_defaults(func=_sft)
    p = stages.add_parser("grpo", help="GRPO reinforcement learning with a task's verifier as reward")
    _add_common(p, "grpo")
    p.set_defaults(func=_grpo)

    lora = sub.add_parser("lora", help="LoRA adapter tools")
    tools = lora.add_subparsers(dest="lora_command", metavar="COMMAND")
    p = tools.add_parser("merge", help="fold a LoRA adapter checkpoint into a plain checkpoint")
    p.add_argument("adapter", help="adapter checkpoint directory (from `diji train sft` with lora.rank > 0)")
    p.add_argument("--out", required=True, help="directory for the merged checkpoint")
    p.set_defaults(func=_lora_merge)

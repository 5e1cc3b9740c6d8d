"""CLI for stage 2: `diji data prepare|report|flywheel|distill`, `diji tokenizer train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from diji.cli import hidden_alias


def register(sub: Any) -> None:
    """Add the `data` and `tokenizer` command groups to the top-level sub-parsers."""
    data = sub.add_parser("data", help="prepare and inspect token datasets")
    data.set_defaults(func=lambda a: _help(data))
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = dsub.add_parser(
        "prepare",
        help="read, curate, tokenize and shard a corpus",
        description="Read .txt/.jsonl/.parquet inputs (optionally .gz/.zst), curate them, train or use a "
        "tokenizer, and write train-*.bin / val-*.bin shards with manifest.json. Resumable: rerun the "
        "same command after an interruption.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, directories or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    p.add_argument("--config", metavar="FILE", help="TOML data config (see examples/data*.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--tokenizer", metavar="FILE", help="use this tokenizer.json instead of training one")
    p.add_argument("--decontaminate", nargs="+", default=[], metavar="PATH", help="evaluation sets to remove")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    r = dsub.add_parser("report", help="human-readable summary of a data directory (markdown)")
    r.add_argument("dir", metavar="DIR", help="a data directory written by `diji data prepare`")
    r.add_argument("--verify", action="store_true", help="also check every shard's sha256")
    r.set_defaults(func=_report)

    f = dsub.add_parser("flywheel", help="export well-rated served conversations as SFT data (JSONL)")
    f.add_argument("--input", dest="audit_dir", default=None, metavar="AUDIT_DIR",
                   help="the server's audit directory (see `diji serve --policy`); required")
    hidden_alias(f, "--from", "audit_dir")
    f.add_argument("--out", required=True, metavar="FILE", help="output JSONL for `diji train sft`")
    f.add_argument("--min-rating", type=int, default=1, help="keep responses rated at least this (default 1)")
    f.set_defaults(func=_flywheel)

    d = dsub.add_parser(
        "distill", help="SFT data by rejection sampling: a teacher answers, a verifier keeps the right replies",
        description="Sample --samples replies per problem of --prompts (GSM8K/MATH-style JSONL with answers) from "
        "--teacher (an OpenAI-compatible URL or a checkpoint directory), keep the verified ones with their "
        "<think> trace, and append them to --out as messages JSONL for `diji train sft`. Rerun the same command "
        "to resume after an interruption (no prompt is lost or repeated).")
    d.add_argument("--teacher", required=True, metavar="URL|CKPT",
                   help="an OpenAI-compatible base URL (diji serve, vLLM, …) or a local checkpoint directory")
    d.add_argument("--prompts", required=True, metavar="FILE",
                   help="JSONL problems with reference answers (question/answer with '#### n', problem/solution with \\boxed{})")
    d.add_argument("--out", required=True, metavar="FILE",
                   help="messages JSONL for `diji train sft`; an existing file is resumed (ledger: FILE.done.jsonl)")
    d.add_argument("--samples", type=int, default=4, metavar="K", help="replies sampled per prompt (default 4)")
    d.add_argument("--verifier", default="math", metavar="math|MODULE:FUNCTION",
                   help="which replies to keep: math (final answer equals the reference) or a plug-in "
                        "reward(completion, reference) -> float, kept at >= 1")
    d.add_argument("--keep", type=int, default=0, metavar="N", help="verified replies kept per prompt; 0 = all")
    d.add_argument("--require-think", action="store_true", help="keep only replies with a <think> trace")
    d.add_argument("--max-tokens", type=int, default=1024, help="generation budget per reply")
    d.add_argument("--temperature", type=float, default=0.7, help="teacher sampling temperature")
    d.add_argument("--top-p", type=float, default=1.0, help="teacher nucleus sampling (1 = off)")
    d.add_argument("--seed", type=int, default=0, help="base of the per-prompt seed sent with every request")
    d.add_argument("--model", default="", help="model name for the endpoint (default: the first it lists)")
    d.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                   help="environment variable with the endpoint's API key")
    d.add_argument("--concurrency", type=int, default=4, help="requests in flight (endpoint teachers)")
    d.add_argument("--retries", type=int, default=4, help="retries per prompt on errors, timeouts, 429/5xx")
    d.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_distill)

    tok = sub.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tok.set_defaults(func=lambda a: _help(tok))
    tsub = tok.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    t = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, directories or globs")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N", help="tokens in the vocabulary")
    t.add_argument("--out", required=True, metavar="DIR", help="directory to write tokenizer.json into")
    t.add_argument("--text-field", default="text", metavar="NAME", help="JSONL field / parquet column")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_tokenizer_train)


def _flywheel(args: argparse.Namespace) -> int:
    import json

    from diji.errors import DijiError
    from diji.serve.flywheel import export_flywheel

    if not args.audit_dir:
        raise DijiError("data flywheel needs --input AUDIT_DIR (the server's audit directory)")
    stats = export_flywheel(args.audit_dir, args.out, min_rating=args.min_rating)
    print(json.dumps(stats.as_dict()))
    return 0


def _distill(args: argparse.Namespace) -> int:
    import json

    from diji.data.distill import DistillConfig, distill, env_rank
    from diji.errors import DijiError

    cfg = DistillConfig(teacher=args.teacher, prompts=args.prompts, out=args.out, samples=args.samples,
                        verifier=args.verifier, keep=args.keep, require_think=args.require_think,
                        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        model=args.model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                        retries=args.retries, timeout=args.timeout)
    stats = distill(cfg, progress=not args.quiet)
    if env_rank() != 0:
        return 0
    print(json.dumps(stats.as_dict(), ensure_ascii=False))
    if stats.failed:
        raise DijiError(f"{stats.failed} prompts failed after {args.retries} retries (first: {stats.errors[0]}); "
                        "rerun the same command to retry them")
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from diji.config import load_config
    from diji.data.prepare import DataConfig, prepare
    from diji.data.report import curation_summary

    cfg = load_config(DataConfig, args.config, args.set)
    manifest = prepare(
        args.input,
        Path(args.out),
        cfg,
        tokenizer=args.tokenizer,
        decontaminate=args.decontaminate,
        show_progress=not args.quiet,
    )
    s = manifest["stats"]
    summary = curation_summary(manifest)
    removed = ", ".join(f"{k} {v}" for k, v in summary["removed"].items() if v) or "nothing"
    print(
        f"wrote {args.out}: {s['tokens']['train']:,} train + {s['tokens']['val']:,} val tokens "
        f"from {s['documents']['train'] + s['documents']['val']:,} of {s['read']['documents']:,} documents "
        f"(removed: {removed}; bad inputs: {s['read']['bad_total']})"
    )
    print(f"details: diji data report {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from diji.data.prepare import load_manifest, verify_shards
    from diji.data.report import render_report

    manifest = verify_shards(args.dir) if args.verify else load_manifest(args.dir)
    sys.stdout.write(render_report(manifest, Path(args.dir)))
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    from diji.data.readers import ReadStats, expand_inputs, iter_documents
    from diji.data.tokenizer import Tokenizer, train_tokenizer
    from diji.errors import DijiError

    paths = expand_inputs(args.input)
    stats = ReadStats()
    texts = (d.text for d in iter_documents(paths, args.text_field, stats))
    out = train_tokenizer(texts, args.vocab_size, Path(args.out), show_progress=not args.quiet)
    if stats.documents == 0:
        out.unlink()
        raise DijiError(f"no readable documents in {', '.join(args.input)} ({stats.to_dict()['bad_total']} bad inputs)")
    tok = Tokenizer.from_file(out)
    bad = stats.to_dict()["bad_total"]
    print(f"wrote {out}: vocab {tok.vocab_size} from {stats.documents:,} documents ({bad} bad inputs skipped)")
    return 0

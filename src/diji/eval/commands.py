"""CLI: `diji eval CKPT[,CKPT...] --tasks NAME[,NAME] [--limit N] [--num-fewshot K] [--out results.json]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diji.cli import hidden_alias
from diji.errors import DijiError
from diji.options import DTYPE_CHOICES, DTYPE_HELP


def _eval(args: argparse.Namespace) -> int:
    from diji.eval.harness import evaluate, parse_tasks, task_texts, validate
    from diji.eval.result import EvalSettings
    from diji.io import atomic_write_json

    try:
        settings = EvalSettings(limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                                mode=args.mode, samples=args.samples, temperature=args.temperature,
                                top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                window=args.window, verifier=args.verifier)
    except ValueError as e:
        raise DijiError(f"--{str(e).replace('_', '-')}") from None
    checkpoints = [c for part in args.checkpoints for c in part.split(",") if c]
    if not checkpoints:
        if args.decontaminate is None:
            raise DijiError("give at least one checkpoint (or --decontaminate DATA_DIR for a report only)")
        from diji.eval.decontam import contamination

        specs = parse_tasks(args.tasks)
        validate(specs, settings)
        out = {s.name: contamination(task_texts(s, settings), args.decontaminate, args.ngram)
               for s in specs if s.family != "ppl"}
        for name, rep in out.items():
            print(f"{name}: {rep['contaminated']}/{rep['checked']} items ({rep['fraction']:.1%}) share a "
                  f"{rep['ngram_tokens']}-token n-gram with the train split; {rep['too_short']} too short to check")
        if args.output:
            atomic_write_json(args.output, {"decontamination": out})
        return 0
    validate(parse_tasks(args.tasks), settings)  # a bad task file fails before any checkpoint is looked at
    for c in checkpoints:
        if not Path(c).is_dir():
            raise DijiError(f"checkpoint not found: {c}")
    report = evaluate(checkpoints, args.tasks, settings, device=args.device, dtype=args.dtype,
                      progress=None if not args.no_progress
                      else False, record=not args.no_record, decontaminate=args.decontaminate, ngram=args.ngram)
    print(report.table())
    if args.output:
        atomic_write_json(args.output, report.to_json(include_samples=not args.no_samples))
        print(f"results written to {args.output}")
    if args.json:
        print(json.dumps(report.to_json(include_samples=False), ensure_ascii=False))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate checkpoints on built-in task families (ppl, mc, math, reasoning)",
        description="Evaluate one or more checkpoints on the same items. Tasks: ppl:PATH (data dir, .txt, "
                    ".jsonl), mc:FILE.jsonl, math:FILE.jsonl, arith / arith_en / arith_zh (reasoning = arith). "
                    "Scores are appended to each checkpoint's lineage.json.")
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="checkpoint directories (comma- or space-separated)")
    p.add_argument("--tasks", required=True, help="comma-separated task specs, e.g. mc:q.jsonl,math:gsm.jsonl,arith")
    p.add_argument("--limit", type=int, default=0, help="only the first N items (windows for ppl); 0 = all")
    p.add_argument("--num-fewshot", type=int, default=0, help="solved examples before each question (mc, math)")
    p.add_argument("--out", dest="output", help="write the full results (with per-item samples) to this JSON file")
    hidden_alias(p, "--output", "output")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    p.add_argument("--mode", default="auto", choices=("auto", "chat", "completion"),
                   help="math prompting; auto = chat for sft/grpo checkpoints, completion otherwise")
    p.add_argument("--samples", type=int, default=1, help="completions per math item (k for maj@k / pass@k)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; needed > 0 with --samples > 1")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling for generation (1 = off)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="generation budget per completion (use grpo.max_new_tokens to reproduce GRPO's val_accuracy)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed; item i draws from (seed, i)")
    p.add_argument("--verifier", default="", metavar="math|MODULE:FUNCTION",
                   help="grader of math:FILE tasks: the built-in final-answer check (math, default) or a plug-in "
                        "reward(completion, reference) -> float, as module:function or path/file.py:function; "
                        "a reward >= 1 counts as correct")
    p.add_argument("--window", type=int, default=0, help="ppl window in tokens; 0 = the model's context")
    p.add_argument("--decontaminate", metavar="DATA_DIR",
                   help="also report which task items share a long n-gram with DATA_DIR's train split")
    p.add_argument("--ngram", type=int, default=13, help="n-gram length (tokens) for --decontaminate")
    p.add_argument("--device", default="auto", help="device to evaluate on (auto = the fastest available)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.add_argument("--no-record", action="store_true", help="do not append the scores to lineage.json")
    p.add_argument("--no-samples", action="store_true", help="leave per-item samples out of --output")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help="no progress bars")
    hidden_alias(p, "--no-progress", "no_progress", action="store_true")
    p.add_argument("--json", action="store_true", help="also print the summary JSON on stdout")
    p.set_defaults(func=_eval)

"""CLI: `diji generate CKPT --prompt TEXT`."""

from __future__ import annotations

import argparse
import sys

from diji.errors import DijiError


def _generate(args: argparse.Namespace) -> int:
    from diji.compute.device import select_device
    from diji.data.tokenizer import Tokenizer
    from diji.model.generate import SamplingParams, generate
    from diji.train.checkpoint import load_checkpoint

    device = select_device(args.device).device
    loaded = load_checkpoint(args.checkpoint, device=device)
    tok = Tokenizer.from_file(loaded.tokenizer_file)
    ids = tok.encode(args.prompt)
    if not ids:
        raise DijiError("the prompt is empty; pass some text with --prompt")
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, stop_ids=(tok.eos_id, tok.im_end_id),
                                seed=args.seed)
    except ValueError as e:
        raise DijiError(str(e)) from None
    loaded.model.eval()
    try:
        out = generate(loaded.model, [ids], params, pad_id=tok.pad_id)[0]
    except ValueError as e:
        raise DijiError(str(e)) from None
    sys.stdout.write(args.prompt + tok.decode(out.tokens) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a checkpoint (KV-cached)")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_generate)

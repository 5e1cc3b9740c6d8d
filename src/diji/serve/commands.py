"""CLI: `diji generate CKPT --prompt TEXT` and `diji serve CKPT`."""

from __future__ import annotations

import argparse
import os
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


def _serve(args: argparse.Namespace) -> int:
    from diji.safety.policy import load_policy
    from diji.serve.engine import EngineConfig
    from diji.serve.server import ServeConfig, load_server, serve_forever

    if args.threads < 0:
        raise DijiError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        import torch

        # Intra-op threads for the model. On a CPU shared with other work (or with the clients of a
        # load test) fewer threads than cores avoids OpenMP spin-waiting against other processes.
        torch.set_num_threads(args.threads)
    policy = load_policy(args.policy, args.set)
    try:
        api_key = args.api_key if args.api_key is not None else os.environ.get("DIJI_API_KEY", "")
        cfg = ServeConfig(host=args.host, port=args.port, api_key=api_key, model_name=args.model_name,
                          engine=EngineConfig(max_batch_size=args.max_batch_size))
    except ValueError as e:
        raise DijiError(str(e)) from None
    server = load_server(args.checkpoint, cfg, policy, device=args.device)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"diji: warning: serving on {cfg.host} without --api-key; anyone who can reach it can use it",
              file=sys.stderr)
    print(f"diji: serving {server.model_name} on http://{cfg.host}:{cfg.port} (chat page at /)", file=sys.stderr)
    serve_forever(server)
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

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat page at /")
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every /v1 call "
                   "(default: the DIJI_API_KEY environment variable, else none)")
    p.add_argument("--model-name", default="", help="the name clients pass as 'model' (default: checkpoint dir name)")
    p.add_argument("--policy", default=None, help="safety policy TOML (see examples/policy.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a policy key")
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0 = torch's default)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_serve)

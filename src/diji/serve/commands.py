"""CLI: `diji generate CKPT --prompt TEXT` and `diji serve CKPT`."""

from __future__ import annotations

import argparse
import os
import sys

from diji.config import DEFAULT_TEMPERATURE
from diji.errors import DijiError
from diji.options import DTYPE_CHOICES, DTYPE_HELP


def _generate(args: argparse.Namespace) -> int:
    from diji.data.tokenizer import Tokenizer
    from diji.model.generate import SamplingParams, generate
    from diji.train.checkpoint import load_for_inference

    loaded = load_for_inference(args.checkpoint, args.device, args.dtype)
    tok = Tokenizer.from_file(loaded.tokenizer_file)
    ids = tok.encode_prompt(args.prompt)
    if not ids:
        raise DijiError("the prompt is empty; pass some text with --prompt")
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_k=args.top_k, top_p=args.top_p, stop_ids=tok.stop_ids,
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
    from diji.train.checkpoint import inference_dtype_for

    if args.threads < 0:
        raise DijiError(f"--threads must be >= 0 (0 = torch's default), got {args.threads}")
    if args.threads:
        import torch

        # Intra-op threads for the model. On a CPU shared with other work (or with the clients of a
        # load test) fewer threads than cores avoids OpenMP spin-waiting against other processes.
        torch.set_num_threads(args.threads)
    policy = load_policy(args.policy, args.set)
    try:
        keys = args.api_key if args.api_key else [k for k in os.environ.get("DIJI_API_KEY", "").split(",") if k]
        cfg = ServeConfig(
            host=args.host, port=args.port, api_key=keys[0] if keys else "", api_keys=tuple(keys[1:]),
            metrics_key=args.metrics_key or os.environ.get("DIJI_METRICS_KEY", ""), model_name=args.model_name,
            max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout, request_timeout_s=args.request_timeout,
            max_connections=args.max_connections, max_seqs_per_request=args.max_seqs_per_request,
            max_queue=args.max_queue, max_stop_chars=args.max_stop_chars, docs=args.docs,
            allowed_hosts=tuple(h.lower() for h in args.allowed_host), cors_origins=tuple(args.cors_origin),
            engine=EngineConfig(max_batch_size=args.max_batch_size, max_model_len=args.max_model_len,
                                max_prefill_tokens=args.max_prefill_tokens))
    except ValueError as e:
        raise DijiError(str(e)) from None
    dtype, _ = inference_dtype_for(args.checkpoint, args.device, args.dtype)
    server = load_server(args.checkpoint, cfg, policy, device=args.device, dtype=dtype)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(f"diji: warning: serving on {cfg.host} without --api-key; anyone who can reach it can use it",
              file=sys.stderr)
    print(f"diji: serving {server.model_name} on http://{cfg.host}:{cfg.port} (chat page at /)", file=sys.stderr)
    serve_forever(server)
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a checkpoint (KV-cached)")
    p.add_argument("checkpoint", help="a checkpoint directory (plain or LoRA adapter)")
    p.add_argument("--prompt", required=True, help="the text to continue (BOS is added where the tokenizer adds it)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate (default: 64)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"sampling temperature; 0 = greedy (default: {DEFAULT_TEMPERATURE}, as the API and chat page)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 = off (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--device", default="auto", help="cpu, an accelerator such as cuda:0/npu:0, or auto (default: auto)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    p.set_defaults(func=_generate)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat page at /")
    p.add_argument("checkpoint", help="a checkpoint directory (plain or LoRA adapter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every path but /health; repeat for one key per "
                   "client (default: the comma-separated DIJI_API_KEY environment variable, else none)")
    p.add_argument("--metrics-key", default="", help="a key that may read /metrics only (or DIJI_METRICS_KEY)")
    p.add_argument("--model-name", default="", help="the name clients pass as 'model' (default: checkpoint dir name)")
    p.add_argument("--policy", default=None, help="safety policy TOML (see examples/policy.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a policy key")
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences decoded together (KV-cache slots)")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="longest prompt + reply per sequence (0 = the model's context); sizes the KV cache")
    p.add_argument("--max-prefill-tokens", type=int, default=4096, help="prompt tokens per prefill step")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP + "; also the KV cache's")
    p.add_argument("--max-seqs-per-request", type=int, default=64, help="prompts × n allowed in one request")
    p.add_argument("--max-queue", type=int, default=256, help="sequences waiting for a slot before 503")
    p.add_argument("--max-connections", type=int, default=256, help="concurrent connections before 503")
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="largest request body (413 above)")
    p.add_argument("--body-timeout", type=float, default=10.0, help="seconds to receive a body (408 after)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a generation may take (504)")
    p.add_argument("--max-stop-chars", type=int, default=256, help="longest stop string accepted")
    p.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                   help="Host header accepted (repeatable; default: loopback names when bound to loopback)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser origin allowed to call the API (repeatable; default: none)")
    p.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (behind the key)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0 = torch's default)")
    p.add_argument("--device", default="auto", help="cpu, an accelerator such as cuda:0/npu:0, or auto (default: auto)")
    p.set_defaults(func=_serve)

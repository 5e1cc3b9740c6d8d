"""CLI for stage 1: `diji doctor` (what is here and what would run) and `diji conformance` (prove it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from diji.cli import hidden_alias

    d = sub.add_parser("doctor", help="devices, dtypes, distributed back-ends and which kernels run here",
                       description="Probe this machine: torch and plugin versions, devices, supported dtypes, "
                       "fused attention, distributed back-ends, and which kernel implementation would be "
                       "chosen for each op, with the reason.")
    d.add_argument("--device", default="auto", help="device to profile (default: auto, or $DIJI_DEVICE)")
    d.add_argument("--compile", action="store_true", help="also probe torch.compile (30-70 s on a CPU)")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    d.set_defaults(func=_doctor)

    c = sub.add_parser("conformance", help="every op and a golden training trajectory vs a float64 CPU reference",
                       description="Check every registered kernel implementation (forward and backward, "
                       "representative and odd shapes) and a short fixed-seed training run against float64 "
                       "on the CPU. Prints a table, writes JSON, exits 1 on any failure.")
    c.add_argument("--device", default="auto", help="device under test (default: auto, or $DIJI_DEVICE)")
    c.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype for ops; for the trajectory, the autocast dtype (weights stay float32)")
    c.add_argument("--ops", default="", help="comma-separated ops to check (default: all registered)")
    c.add_argument("--steps", type=int, default=8, help="golden-trajectory training steps (0 = skip)")
    c.add_argument("--isolate", action="store_true",
                   help="run each op in its own process (survives hard crashes in native kernels)")
    c.add_argument("--slow-start", action="store_true",
                   help="also check implementations that compile on first use (torch.compile: 30-70 s each on a CPU)")
    c.add_argument("--out", default="conformance.json", metavar="FILE", help="where to write the JSON report")
    hidden_alias(c, "--json-out", dest="out", metavar="FILE")  # the 0.1 spelling, kept for one release
    c.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the table")
    c.set_defaults(func=_conformance)


def _tiny_model():
    from diji.model.transformer import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=160, max_position_embeddings=64)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    return model


def doctor_report(device_str: str = "auto", probe_compile: bool = False) -> dict:
    import torch

    from diji.compute.backends import BACKENDS, load_plugins
    from diji.compute.device import select_device
    from diji.compute.fallback import FALLBACKS
    from diji.compute.profile import capabilities
    from diji.kernels.registry import REGISTRY

    plugins = load_plugins()
    choice = select_device(device_str)
    caps = capabilities(choice.device, probe_compile=probe_compile)
    dist = torch.distributed
    dist_ok = {}
    if dist.is_available():
        for b in sorted({b.dist_backend for b in BACKENDS}):
            check = getattr(dist, f"is_{b}_available", None)
            dist_ok[b] = bool(check()) if check is not None else dist.Backend.backend_list.count(b) > 0
    kernels: dict[str, dict[str, dict[str, str]]] = {}
    for label, dtype, amp in (("float32", torch.float32, None), ("bfloat16 autocast", torch.float32, torch.bfloat16),
                              ("bfloat16", torch.bfloat16, None)):
        if not caps.supports("bfloat16") and "bfloat16" in label:
            continue
        kernels[label] = {}
        for op in REGISTRY.ops():
            c = REGISTRY.choose(op, choice.device.type, dtype, amp)
            kernels[label][op] = {"impl": c.impl.name, "reason": c.reason,
                                  "available": ", ".join(REGISTRY.impls(op))}
    acc = getattr(torch, "accelerator", None)
    return {
        "torch": torch.__version__,
        "plugins": plugins,
        "device": {"chosen": str(choice.device), "reason": choice.reason,
                   "accelerator_count": acc.device_count() if acc is not None and acc.is_available() else 0},
        "capabilities": caps.to_dict(),
        "distributed": {"available": dist.is_available(), "backends": dist_ok, "for_device": caps.dist_backend},
        "kernels": kernels,
        "fallbacks": FALLBACKS.reasons(),
    }


def _doctor(args: argparse.Namespace) -> int:
    rep = doctor_report(args.device, args.compile)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    caps = rep["capabilities"]
    out = [f"torch {rep['torch']}  python {caps['extra'].get('python', '')}"]
    out.append("plugins: " + (", ".join(f"{k} {v}" for k, v in rep["plugins"].items()) or "none installed"))
    out.append(f"device: {rep['device']['chosen']} ({rep['device']['reason']})")
    mem = caps["memory_bytes"] / 2**30
    out.append(f"memory: {mem:.1f} GiB" + (f"   cpu SIMD: {caps['cpu_capability']}" if caps["cpu_capability"] else ""))
    out.append("dtypes: " + "  ".join(f"{k} {'yes' if v['ok'] else 'NO'}" for k, v in caps["dtypes"].items()))
    for k, v in caps["dtypes"].items():
        if not v["ok"]:
            out.append(f"  {k}: {v['why']}")
    out.append("autocast: " + "  ".join(f"{k} {'yes' if v['ok'] else 'no'}" for k, v in caps["autocast"].items()))
    for name in ("fused_attention", "fused_adamw", "compile"):
        p = caps[name]
        out.append(f"{name.replace('_', ' ')}: {'yes' if p['ok'] else 'no'} ({p['why']})")
    d = rep["distributed"]
    out.append(f"distributed: back-end for this device '{d['for_device']}'; available here: "
               + (", ".join(b for b, ok in d["backends"].items() if ok) or "none"))
    for label, ops in rep["kernels"].items():
        out.append(f"kernels ({label}):")
        for op, c in ops.items():
            out.append(f"  {op:<22}{c['impl']:<11}{c['reason']}")
    if rep["fallbacks"]:
        out.append("fallbacks so far:")
        out += [f"  {k}: {v}" for k, v in rep["fallbacks"].items()]
    print("\n".join(out))
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from diji.compute.conformance import check_ops, format_table, golden_trajectory, to_json
    from diji.compute.device import select_device
    from diji.compute.profile import capabilities
    from diji.errors import DijiError
    from diji.io import atomic_write_json
    from diji.kernels.registry import REGISTRY

    device = select_device(args.device).device
    if not capabilities(device).supports(args.dtype):
        raise DijiError(f"{device} cannot compute in {args.dtype}: {capabilities(device).dtypes[args.dtype].why}")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()] or None
    for op in ops or []:
        REGISTRY.impls(op)  # unknown op → one clear line
    if args.steps < 0:
        raise DijiError(f"--steps must be >= 0, got {args.steps}")
    print(f"diji conformance: {device} {args.dtype} vs float64 cpu", file=sys.stderr)
    rows = check_ops(device, args.dtype, ops, isolate=args.isolate, slow_start=args.slow_start)
    traj = golden_trajectory(_tiny_model, device, args.dtype, steps=args.steps) if args.steps else None
    report = to_json(rows, traj)
    atomic_write_json(Path(args.out), report)
    failed = sum(not r.passed for r in rows) + (0 if traj is None or traj.passed else 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(rows, traj))
        print(f"\n{'all passed' if not failed else f'{failed} FAILED'}; JSON written to {args.out}")
    return 0 if not failed else 1

"""Peak RSS of serving a checkpoint: a float32 vs a bfloat16 copy of the same model.

Each side runs in its own process (peak RSS is per process and never goes down). `--via serve`
(default) starts `diji serve CKPT --dtype float32|bfloat16` with its default engine limits (KV-cache
slots and length), sends one chat completion of --new tokens over HTTP and reads the server's VmHWM;
`--via load` loads with `load_checkpoint(dtype=...)` as serve does and calls `generate` at batch 1.
`--shape` picks the model: `127m` (768 wide, 12 layers, 32k vocab, untied), `0.5b` (the Qwen2.5-0.5B
shape: 896 wide, 24 layers, 14/2 heads, 151936 vocab, tied; 494 M parameters) or `1b` (the Llama-3.2-1B
shape: 2048 wide, 16 layers, 32/8 heads, 8192 MLP, 128256 vocab, tied; 1.24 B parameters, a 4.9 GB fp32
checkpoint, the small end of what people deploy); --hidden/--layers/--vocab override the width, depth
and vocabulary.

Reports the whole-process peak, the peak above the runtime's own resident memory (a process that has
imported torch, diji and, for serve, the server's modules: the same for both dtypes) and
`rss_ratio_floor`, the ratio if each process held exactly the runtime, one copy of its weights and (for
serve) the KV cache the engine preallocates, in the same dtype (32 slots × the context by default): the
runtime's ~220-300 MB keeps a 127 M-parameter model's whole-process ratio above ~0.66 whatever serving
does; at 1 B parameters the floor is ~0.52. Peaks are VmHWM, not ru_maxrss, which on Linux survives
fork + exec and so reported the parent's size for a child that stayed smaller. Also says whether this
CPU computes bf16 fast (compute.device.fast_low_precision): without AVX512-BF16/AMX, bf16 saves memory
but decodes slower, so serving defaults to float32 there. Prints one JSON line
{"rss_ratio", "rss_above_runtime_ratio", "rss_ratio_floor", ...}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "127m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=2048, vocab_size=32000, tie_word_embeddings=False),
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
}

LOAD_CHILD = r"""
import json, sys, time
import torch
from diji.model.generate import SamplingParams, generate
from diji.train.checkpoint import load_checkpoint
def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
base = status_kb("VmRSS")  # the current resident set: the runtime's own memory
ckpt, dtype, new = sys.argv[1], getattr(torch, sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
model = load_checkpoint(ckpt, dtype=dtype).model.eval()
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
generate(model, [[5, 6, 7, 8]], SamplingParams(max_new_tokens=new))
gen_s = time.perf_counter() - t0
# VmHWM, this process image's peak: ru_maxrss survives fork + exec on Linux, so a child would report the
# parent's resident set at the fork (the parent holds the model it saved) whenever its own peak is lower.
peak = status_kb("VmHWM")
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"peak_kb": peak, "runtime_kb": base, "load_s": load_s, "tok_s": new / gen_s,
                  "weights_kb": weights / 1024, "param_dtype": str(next(model.parameters()).dtype)}))
"""

SERVE_RUNTIME_CHILD = r"""
import json
import torch, uvicorn, fastapi, diji.serve.server, diji.train.checkpoint, diji.model.generate
with open("/proc/self/status") as f:
    print(json.dumps({"runtime_kb": next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))}))
"""


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def kv_cache_elements(cfg) -> int:
    """Elements of the KV cache `diji serve` preallocates with its default limits (slots × context)."""
    from diji.serve.engine import EngineConfig

    heads, dk, dv = cfg.cache_dims()
    return EngineConfig().max_batch_size * cfg.max_position_embeddings * cfg.num_hidden_layers * heads * (dk + dv)


def make_checkpoints(root: Path, shape: dict) -> tuple[Path, Path, int, int]:
    from diji.data.tokenizer import train_tokenizer
    from diji.model.transformer import ModelConfig, Transformer
    from diji.train.checkpoint import save_checkpoint

    tok = train_tokenizer(iter(["a tiny corpus for a tokenizer", "only the ids matter here"] * 50), 300, root,
                          show_progress=False)
    cfg = ModelConfig(max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    fp32 = save_checkpoint(root / "fp32", model, tok, {"stage": "bench"})
    bf16 = save_checkpoint(root / "bf16", model.to(torch.bfloat16), tok, {"stage": "bench"})
    del model
    gc.collect()
    return Path(fp32), Path(bf16), params, kv_cache_elements(cfg)


def run_load(ckpt: Path, dtype: str, new: int) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(ckpt), dtype, str(new)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_serve(ckpt: Path, dtype: str, new: int, weights_kb: float) -> dict:
    import httpx

    runtime = subprocess.run([sys.executable, "-c", SERVE_RUNTIME_CHILD], capture_output=True, text=True, check=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "diji", "serve", str(ckpt), "--port", str(port), "--model-name", "bench",
         "--dtype", dtype, "--device", "cpu", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        t0, deadline = time.perf_counter(), time.monotonic() + 900
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"diji serve --dtype {dtype} did not start: "
                                 f"{server.stderr.read().decode()[-500:] if server.poll() is not None else 'timeout'}")
            time.sleep(0.5)
        load_s = time.perf_counter() - t0
        body = {"model": "bench", "messages": [{"role": "user", "content": "only the ids matter here"}],
                "max_tokens": new, "temperature": 0}
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=900)
        gen_s = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"chat completion failed with HTTP {r.status_code}: {r.text[:300]}")
        tokens = r.json()["usage"]["completion_tokens"]
        peak = status_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"peak_kb": peak, "runtime_kb": json.loads(runtime.stdout)["runtime_kb"], "load_s": load_s,
            "tok_s": tokens / gen_s, "weights_kb": weights_kb, "param_dtype": f"torch.{dtype}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="127m")
    ap.add_argument("--via", choices=("serve", "load"), default="serve",
                    help="measure a `diji serve` process answering one request, or load_checkpoint + generate")
    ap.add_argument("--hidden", type=int, help="override the shape's width (the MLP follows at 8/3)")
    ap.add_argument("--layers", type=int, help="override the shape's depth")
    ap.add_argument("--vocab", type=int, help="override the shape's vocabulary")
    ap.add_argument("--new", type=int, default=16)
    args = ap.parse_args()
    from diji.compute.device import fast_low_precision

    shape = dict(SHAPES[args.shape])
    if args.hidden:
        shape |= {"hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3 // 64 * 64}
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    if args.vocab:
        shape["vocab_size"] = args.vocab
    fast, why = fast_low_precision(torch.device("cpu"), torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, bf16, params, kv = make_checkpoints(Path(tmp), shape)
        if args.via == "load":
            a, b = run_load(fp32, "float32", args.new), run_load(bf16, "bfloat16", args.new)
        else:
            a = run_serve(fp32, "float32", args.new, params * 4 / 1024)
            b = run_serve(bf16, "bfloat16", args.new, params * 2 / 1024)
            a["kv_kb"], b["kv_kb"] = kv * 4 / 1024, kv * 2 / 1024  # the server's cache is in --dtype too
    above = (b["peak_kb"] - b["runtime_kb"]) / max(1, a["peak_kb"] - a["runtime_kb"])
    # The ratio if each process held exactly the runtime, one copy of its weights and (serve) its KV cache.
    floor = ((b["runtime_kb"] + b["weights_kb"] + b.get("kv_kb", 0))
             / (a["runtime_kb"] + a["weights_kb"] + a.get("kv_kb", 0)))
    result = {"rss_ratio": round(b["peak_kb"] / a["peak_kb"], 3), "rss_above_runtime_ratio": round(above, 3),
              "rss_ratio_floor": round(floor, 3), "via": args.via, "shape": args.shape, "params_m": round(params / 1e6, 1),
              "fp32_peak_mb": round(a["peak_kb"] / 1024, 1), "bf16_peak_mb": round(b["peak_kb"] / 1024, 1),
              "runtime_mb": round(a["runtime_kb"] / 1024, 1), "fp32_weights_mb": round(a["weights_kb"] / 1024, 1),
              "bf16_weights_mb": round(b["weights_kb"] / 1024, 1), "fp32_kv_cache_mb": round(a.get("kv_kb", 0) / 1024, 1),
              "fp32_tok_s": round(a["tok_s"], 2),
              "bf16_tok_s": round(b["tok_s"], 2), "fp32_load_s": round(a["load_s"], 1),
              "bf16_load_s": round(b["load_s"], 1), "bf16_param_dtype": b["param_dtype"],
              "fast_bf16": fast, "fast_bf16_why": why}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

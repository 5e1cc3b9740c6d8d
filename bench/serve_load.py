"""Serving under load: 1, 16 and 64 concurrent streaming chat clients on loopback against `diji serve`.

A small random-weight model (4 layers, 256 wide, 2k vocab, tokenizer trained on tinyshakespeare when
../shared/data has it) is served by a separate `diji serve` process, so clients and server do not share
a GIL. Each client streams chat completions of `--new` tokens. Prints one JSON line:
{"tok_s_c1", "tok_s_c16", "tok_s_c64", "speedup_c16", "ttft_p50_c1", "ttft_p99_c1", ..., "errors"}
— generated tokens per second over the wall time of a level, time to first content token (seconds),
failed requests, and the 16-client throughput divided by the sequential one (target ≥ 4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from diji.data.tokenizer import train_tokenizer
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import save_checkpoint

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def corpus() -> list[str]:
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    else:  # no reference data: any text gives the tokenizer something to learn
        rng = random.Random(0)
        words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "that", "this", "which", "be", "are", "it"]
        text = "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(5000))
    return [line for line in text.splitlines() if line.strip()]


def make_checkpoint(root: Path, lines: list[str]) -> Path:
    tok_file = train_tokenizer(iter(lines), 2048, root / "tok", show_progress=False)
    cfg = ModelConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=688, max_position_embeddings=512)
    torch.manual_seed(0)
    return save_checkpoint(root / "ckpt", Transformer(cfg), tok_file, {"stage": "bench"})


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


async def one_request(client: httpx.AsyncClient, prompt: str, new: int) -> tuple[int, float]:
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": new,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if ttft is None and c.get("delta", {}).get("content"):
                    ttft = time.perf_counter() - t0
    return tokens, ttft if ttft is not None else time.perf_counter() - t0


async def level(url: str, clients: int, per_client: int, prompts: list[str], new: int) -> dict:
    errors, ttfts, tokens = 0, [], 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker(i: int) -> None:
            nonlocal errors, tokens
            for j in range(per_client):
                try:
                    n, ttft = await one_request(client, prompts[(i * per_client + j) % len(prompts)], new)
                    tokens += n
                    ttfts.append(ttft)
                except Exception:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"tok_s": tokens / wall, "ttft_p50": percentile(ttfts, 50), "ttft_p99": percentile(ttfts, 99),
            "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--sequential-requests", type=int, default=6)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--server-threads", type=int, default=1,
                    help="torch threads in the server; the clients need the other core (0 = torch's default)")
    args = ap.parse_args()
    lines = corpus()
    rng = random.Random(0)
    prompts = [" ".join(rng.sample(lines, 3))[:160] for _ in range(256)]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), lines)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "diji", "serve", str(ckpt), "--port", str(port), "--model-name", "bench",
             "--max-batch-size", "64", "--device", "cpu", "--threads", str(args.server_threads)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("diji serve did not start") from None
                    time.sleep(0.3)
            asyncio.run(level(url, 2, 1, prompts, 8))  # warm-up
            result: dict = {}
            errors = 0
            for clients, per in ((1, args.sequential_requests), (16, args.requests_per_client),
                                 (64, max(1, args.requests_per_client // 2))):
                r = asyncio.run(level(url, clients, per, prompts, args.new))
                errors += r["errors"]
                result |= {f"tok_s_c{clients}": round(r["tok_s"], 1), f"ttft_p50_c{clients}": round(r["ttft_p50"], 3),
                           f"ttft_p99_c{clients}": round(r["ttft_p99"], 3)}
        finally:
            server.terminate()
            server.wait(timeout=30)
    speedup = result["tok_s_c16"] / result["tok_s_c1"] if result["tok_s_c1"] else float("nan")
    print(json.dumps({"speedup_c16": round(speedup, 2), "errors": errors, **result,
                      "new_tokens": args.new, "server_threads": args.server_threads}))


if __name__ == "__main__":
    main()

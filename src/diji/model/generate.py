"""KV-cached autoregressive generation: greedy, temperature, top-k and top-p sampling.

Used by `diji generate`, GRPO rollouts and evaluation. Prompts of different lengths are left-padded so
that every row's newest token sits in the same column; an attention mask hides the padding and explicit
position ids keep RoPE positions counting from each prompt's own first token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import types
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from diji.compute.fallback import FALLBACKS
from diji.errors import DijiError
from diji.kernels import reference
from diji.kernels.registry import REGISTRY
from diji.model.transformer import MLP, Attention, KVCache, Transformer

log = logging.getLogger("diji.generate")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    """Upper bound on generated tokens per sequence."""
    temperature: float = 0.0
    """0 means greedy (argmax); otherwise logits are divided by it before sampling."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1 = off)."""
    stop_ids: tuple[int, ...] = field(default_factory=tuple)
    """Token ids that end a sequence (EOS, end of turn); the stop token is not returned."""
    seed: int | None = None
    """Seed for sampling; the same seed, prompt and model give the same tokens."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, generator=None
) -> torch.Tensor:
    """Pick one token per row of logits (B, V) → (B,). `generator` is one torch.Generator for the batch,
    or a list of B generators, one per row (each row's draws then do not depend on the other rows).

    Never NaN for any accepted value: logits are shifted so each row's maximum is 0 and then *multiplied*
    by 1/temperature clamped to float32's range, so a temperature of 1e-300 (which is 0 in float32 and
    would divide 0 by 0) makes every other token -inf or far below: a one-hot on the argmax, i.e. greedy.
    The top token always survives top-p (a top_p that rounds to 0 keeps just it), and a row whose
    distribution is still not finite (non-finite logits) falls back to its argmax.
    """
    if temperature == 0:
        # argmax's result (first maximum; NaN wins), measured 3x faster than argmax for (16, 4096) on the CPU
        return logits.max(-1).indices
    logits = logits.float()
    best = logits.argmax(-1)
    inv = min(1.0 / temperature, torch.finfo(torch.float32).max)
    logits = (logits - logits.amax(-1, keepdim=True)).nan_to_num(nan=float("-inf")) * inv
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass *before* it already reaches top_p: the top token always survives.
        drop = probs.cumsum(-1) - probs >= top_p
        drop[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    ok = torch.isfinite(probs).all(-1, keepdim=True) & (probs.sum(-1, keepdim=True) > 0)
    probs = torch.where(ok, probs, F.one_hot(best, probs.shape[-1]).to(probs.dtype))
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)])[:, 0]
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _fuse_rows(params: list[torch.Tensor]) -> torch.Tensor:
    """One (sum of rows, ...) tensor whose consecutive row blocks *are* `params`: a fused q|k|v or gate|up
    matrix without a second copy of the weights.

    Each parameter's `.data` becomes a contiguous view of the fused buffer, so the Parameter objects (and
    an optimizer's references to them, its state, their gradients) stay as they were, training updates
    the buffer the decoder reads, and saving sees ordinary contiguous tensors. Parameters that already
    are consecutive blocks of one buffer (packed before) are used as they are, without a copy.
    """
    first = params[0]
    storage, offset, total = first.untyped_storage(), first.storage_offset(), sum(p.shape[0] for p in params)
    shape = (total, *first.shape[1:])
    at = offset
    for p in params:
        if p.untyped_storage().data_ptr() != storage.data_ptr() or p.storage_offset() != at or not p.is_contiguous():
            break
        at += p.numel()
    else:
        return first.new_empty(0).set_(storage, offset, shape)
    # Made outside inference mode (generate runs in it): the buffer becomes the parameters, which must
    # stay usable by autograd afterwards. One parameter at a time, so the old storage is freed as we go.
    with torch.inference_mode(first.is_inference()), torch.no_grad():
        fused = torch.empty(shape, dtype=first.dtype, device=first.device)
        row = 0
        for p in params:
            n = p.shape[0]
            fused[row : row + n].copy_(p)
            p.data = fused[row : row + n]
            row += n
    return fused


def fuse_weights(model: Transformer) -> bool:
    """Lay each block's q/k/v and gate/up weights out as one buffer (in place, see `_fuse_rows`), as the packed
    decoder wants them; False (and nothing changed) for a model it does not support.

    Loading calls it before the first forward: fusing then, while the heap is still clean, measured ~15 MB
    less peak RSS on a 127 M-parameter bf16 model than fusing at the first decode step."""
    if not PackedDecoder.supports(model):
        return False
    for blk in model.model.layers:
        a, m = blk.self_attn, blk.mlp
        _fuse_rows([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        if a.q_proj.bias is not None:
            _fuse_rows([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        _fuse_rows([m.gate_proj.weight, m.up_proj.weight])
    return True


def _linear_b1(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """x (1, in) @ w (out, in)ᵀ (+ b) as a matrix-vector product: on this CPU's BLAS the GEMV of the
    (out, in) layout is as fast as a GEMM in float32 and ~1.8x faster in bfloat16 (docs/LOG.md)."""
    return (torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0]))[None]


def _residual_b1(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.addmv(r[0], w, x[0])[None]


def _residual(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.addmm(r, x, w.t())


class PackedDecoder:
    """One-token decode steps on the model's own weights, fused in place: the fast path of the `decode` op.

    Decoding one token reads every weight once and does little arithmetic, so it is bound by memory
    bandwidth and per-op overhead, not FLOPs. What this does about it on a CPU:
    - q/k/v fused into one matrix and gate/up into another (4 matrix products per layer instead of 7) —
      by making the parameters views of one buffer (`_fuse_rows`), not by copying: one copy of the
      weights exists, and it can never go stale (an optimizer step writes the buffer the decoder reads);
    - matrix-vector products at batch 1, the residual adds folded into the o/down products (addmm);
    - RoPE tables computed once for all positions, the rotation as two multiplies and a half swap;
      grouped-query attention per KV head group (no repeat_interleave copy of the whole cache);
    The reference (`decode:reference`, the model's own forward) stays; tests check the two agree.
    The decoder holds only views and small tables; it is rebuilt when a parameter is replaced
    (`model.to(dtype)`, a new `.data`), which `current()` detects.
    """

    @staticmethod
    def supports(model: Transformer) -> bool:
        """Dense float GQA blocks without q/k norms only; MLA, MoE, Qwen3 and int8 (model/quantize.py) layers
        decode through the model's forward, and so do parameters that are not plain tensors (FSDP2's
        DTensors)."""
        return not model.config.qk_norm and type(model.lm_head) is torch.nn.Linear and all(
            type(b.self_attn) is Attention and type(b.mlp) is MLP
            and all(type(m) is torch.nn.Linear for m in (*b.self_attn.children(), *b.mlp.children())
                    if not hasattr(m, "eps"))
            for b in model.model.layers) and all(type(p.data) is torch.Tensor for p in model.parameters())

    def __init__(self, model: Transformer) -> None:
        cfg = model.config
        self.cfg = cfg
        self.C, self.H, self.K, self.D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head
        self.eps = cfg.rms_norm_eps
        self.params = list(model.parameters())
        self.layers = []
        for blk in model.model.layers:
            a, m = blk.self_attn, blk.mlp
            qkv = _fuse_rows([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            bias = _fuse_rows([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
            gate_up = _fuse_rows([m.gate_proj.weight, m.up_proj.weight])
            self.layers.append((blk.input_layernorm.weight, qkv, bias, a.o_proj.weight,
                                blk.post_attention_layernorm.weight, gate_up, m.down_proj.weight))
        self.embed = model.model.embed_tokens.weight
        self.norm = model.model.norm.weight
        self.head = model.lm_head.weight
        self._stamp = self._current_stamp()
        self.checked_for: weakref.ref = lambda: None
        """The KV cache `current()` was last checked for (decode_step checks once per cache)."""
        half = self.D // 2
        with torch.no_grad():
            positions = torch.arange(cfg.max_position_embeddings, device=self.embed.device)
            self.cos, sin = reference.rope_cos_sin(positions, self.D, cfg.rope_theta, self.embed.dtype,
                                                   cfg.rope_scaling)
            # rotate_half(x)·sin = swap_halves(x)·[-sin₁, sin₂]: (-x₂)·s and x₂·(-s) round the same.
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def _current_stamp(self) -> tuple:
        return tuple((p.data_ptr(), p.dtype) for p in self.params)

    def current(self, model: Transformer) -> bool:
        """Still the model's weights: the same parameters, none re-pointed (a replaced `.data` or dtype)."""
        params = list(model.parameters())
        return (len(params) == len(self.params) and all(p is q for p, q in zip(params, self.params, strict=True))
                and self._current_stamp() == self._stamp)

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # torch's one-call RMSNorm: bitwise the reference's result in float32
            return F.rms_norm(x, (self.C,), w, self.eps)
        # Lower precision: the reference's ops in its order (fp32 statistics, round, then the weight).
        x32 = x.float()
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def step(self, tok: torch.Tensor, cache: KVCache, positions: torch.Tensor | None,
             attention_mask: torch.Tensor | None) -> torch.Tensor:
        """tok (B, 1) → logits (B, V) for the next position; writes k/v into the cache and advances it."""
        B = tok.shape[0]
        H, K, D = self.H, self.K, self.D
        rep, half = H // K, D // 2
        start = cache.length
        S = start + 1
        lin, res = (_linear_b1, _residual_b1) if B == 1 else (F.linear, _residual)
        x = self.embed[tok[:, 0]]  # (B, C)
        if positions is None:
            cos, sin = self.cos[start], self.sin[start]  # (D,)
        else:
            cos, sin = self.cos[positions[:, 0]][:, None], self.sin[positions[:, 0]][:, None]  # (B, 1, D)
        bias = None
        if attention_mask is not None:
            bias = torch.zeros(attention_mask[:, :S].shape, dtype=x.dtype, device=x.device)
            bias.masked_fill_(attention_mask[:, :S] == 0, float("-inf"))
            bias = bias[:, None, None, :]  # (B, 1, 1, S)
        for i, (in_w, wqkv, bqkv, wo, post_w, wgu, wd) in enumerate(self.layers):
            qkv = lin(self._rms(x, in_w), wqkv, bqkv)
            qk = qkv[:, : (H + K) * D].view(B, H + K, D)
            # RoPE, rotate_half convention: x·cos + swap_halves(x)·[-sin, sin]
            rot = qk * cos + qk.view(B, H + K, 2, half).flip(2).view(B, H + K, D) * sin
            keys, values = cache.update(i, rot[:, H:, None], qkv[:, (H + K) * D :].view(B, K, 1, D))  # (B, K, S, D)
            # The rep query heads sharing a KV head are that head's rep "query rows": one SDPA call, no copy.
            y = F.scaled_dot_product_attention(rot[:, :H].view(B, K, rep, D), keys, values, attn_mask=bias)
            x = res(x, y.reshape(B, H * D), wo)
            gu = lin(self._rms(x, post_w), wgu)
            F_ = gu.shape[-1] // 2
            x = res(x, F.silu(gu[:, :F_]) * gu[:, F_:], wd)
        cache.advance()
        return lin(self._rms(x, self.norm), self.head)


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packed(model: Transformer) -> PackedDecoder:
    """The model's packed decoder, rebuilt when a parameter was replaced or re-pointed since packing.

    In-place updates (an optimizer step, fused or not, `load_state_dict`) need no rebuild: the decoder
    reads the parameters' own storage."""
    hit = _PACKED.get(model)
    if hit is None or not hit.current(model):
        _PACKED.pop(model, None)  # drop the old views before fusing again
        hit = PackedDecoder(model)
        _PACKED[model] = hit
    return hit


def _decode_reference(model: Transformer, tok: torch.Tensor, cache: KVCache, positions, attention_mask):
    return model(tok, cache=cache, position_ids=positions, attention_mask=attention_mask)[:, -1]


def _decoder_for(model: Transformer, cache) -> tuple[PackedDecoder | None, bool]:
    """(the packed decoder for this step, whether it was (re)checked now); None → take the reference.

    Inference-only and dense-only by design (not a fallback): other cases take the reference. The model
    walk runs once per cache (one generate() call): walking the modules costs ~10x a decode op."""
    if not isinstance(cache, KVCache) or torch.is_grad_enabled():
        return None, False
    dec = _PACKED.get(model)
    if dec is not None and dec.checked_for() is cache:
        return dec, False
    if not PackedDecoder.supports(model):
        return None, False
    dec = _packed(model)
    dec.checked_for = weakref.ref(cache)
    return dec, True


def _decode_packed(model: Transformer, tok: torch.Tensor, cache: KVCache, positions, attention_mask):
    dec, _ = _decoder_for(model, cache)
    if dec is None:
        return _decode_reference(model, tok, cache, positions, attention_mask)
    return dec.step(tok, cache, positions, attention_mask)


class _StaticStep(torch.nn.Module):
    """The packed step as one graph for Inductor: the new k/v written with `index_copy_` at a tensor index,
    attention over the cache's first n positions, n given as the length of a `span` tensor — with n, the
    cache length and (above batch 1) the batch compiled as symbolic sizes, one graph serves every step of
    every generate call of a batch class. Attention is spelled as products and sums that Inductor fuses
    into its own loops: SDPA's CPU kernel or two batched GEMMs each cost ~0.1-0.3 ms a layer at batch 16
    for what is a few MFLOPs (profiled on an AMD EPYC, docs/LOG.md 2026-12-04).

    The weights are registered as buffers (views of the parameters, no copy) so that Inductor's freezing
    sees them as constants and can prepack the products (MKL or oneDNN) — which *does* copy them (see
    `_decode_compiled`)."""

    def __init__(self, dec: PackedDecoder) -> None:
        super().__init__()
        self.dec = dec
        for i, layer in enumerate(dec.layers):
            for name, t in zip(("in_w", "wqkv", "bqkv", "wo", "post_w", "wgu", "wd"), layer, strict=True):
                if t is not None:
                    self.register_buffer(f"l{i}_{name}", t, persistent=False)
        for name in ("embed", "norm", "head", "cos", "sin"):
            self.register_buffer(name, getattr(dec, name), persistent=False)

    def forward(self, tok: torch.Tensor, at: torch.Tensor, rope_pos: torch.Tensor, ks: list[torch.Tensor],
                vs: list[torch.Tensor], mask: torch.Tensor | None, span: torch.Tensor) -> torch.Tensor:
        """tok (B,), at (1,) the cache index to write, rope_pos (B,) or (1,), mask (B, ≥ n) or None, span (n,)
        with n = at + 1 the positions to attend over → logits (B, V)."""
        dec = self.dec
        B, (H, K, D) = tok.shape[0], (dec.H, dec.K, dec.D)
        rep, half, n = H // K, D // 2, span.shape[0]
        x = self.embed[tok]  # (B, C)
        cos = self.cos.index_select(0, rope_pos)[:, None]  # (B or 1, 1, D)
        sin = self.sin.index_select(0, rope_pos)[:, None]
        bias = None
        if mask is not None:  # (B, 1, 1, n): the left padding of ragged prompts
            bias = torch.zeros((B, n), dtype=x.dtype, device=x.device).masked_fill(mask[:, :n] == 0, float("-inf"))
            bias = bias.view(B, 1, 1, n)
        scale = D ** -0.5
        for i in range(len(dec.layers)):
            w = {n: getattr(self, f"l{i}_{n}", None) for n in ("in_w", "wqkv", "bqkv", "wo", "post_w", "wgu", "wd")}
            qkv = F.linear(dec._rms(x, w["in_w"]), w["wqkv"], w["bqkv"])
            qk = qkv[:, : (H + K) * D].view(B, H + K, D)
            rot = qk * cos + qk.view(B, H + K, 2, half).flip(2).view(B, H + K, D) * sin
            ks[i].index_copy_(2, at, rot[:, H:, None])
            vs[i].index_copy_(2, at, qkv[:, (H + K) * D :].view(B, K, 1, D))
            keys, values = ks[i][:, :, None, :n], vs[i][:, :, None, :n]  # (B, K, 1, n, D)
            q = rot[:, :H].view(B, K, rep, 1, D) * scale  # the rep query heads of each KV head
            scores = (q * keys).sum(-1)  # (B, K, rep, n)
            if bias is not None:
                scores = scores + bias
            y = (scores.softmax(-1)[..., None] * values).sum(-2)  # (B, K, rep, D)
            x = x + F.linear(y.reshape(B, H * D), w["wo"])
            gu = F.linear(dec._rms(x, w["post_w"]), w["wgu"])
            F_ = gu.shape[-1] // 2
            x = x + F.linear(F.silu(gu[:, :F_]) * gu[:, F_:], w["wd"])
        return F.linear(dec._rms(x, self.norm), self.head)


COMPILE_GRAPHS = 8
"""At most this many compiled decode steps per model (one per batch class (1, or more) × ragged or not ×
thread count; cache length and batch size are symbolic); further ones take the eager packed step. Each
compile costs ~10-30 s here (batch 1 autotunes its products)."""


def _cxx_compiler() -> str | None:
    return next((c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)), None)


def _weights_version(dec: PackedDecoder) -> tuple[int, ...]:
    return tuple(p._version for p in dec.params)


def _compiled_fn(dec: PackedDecoder, key: tuple):
    """The compiled step for `key`, compiling it now if there is room; None → use the eager packed step."""
    state = dec.__dict__.setdefault("compiled", {"graphs": {}, "failed": None, "seconds": 0.0})
    fn = state["graphs"].get(key)
    if fn is not None or state["failed"] or len(state["graphs"]) >= COMPILE_GRAPHS:
        return fn
    if _cxx_compiler() is None:
        state["failed"] = "no C++ compiler on PATH (g++, c++, clang++ or $CXX)"
        FALLBACKS.record("kernel:decode:compiled:cpu", f"decode:compiled needs {state['failed']}; "
                         "using the packed step")
        return None
    # Compiled under _inductor_options (C++ wrapper, frozen weights), on the first call.
    step = _StaticStep(dec)
    # Dynamo caches graphs per code object and does not guard on *which* tensors the buffers are; frozen,
    # their values are baked into the graph, so another model of the same shape (or these weights after
    # an update) would silently reuse them. A fresh copy of forward's code per compile keeps each compiled
    # step to its own weights.
    global _COMPILES
    _COMPILES += 1
    code = _StaticStep.forward.__code__
    code = code.replace(co_name=f"{code.co_name}_{_COMPILES}")
    step.forward = types.MethodType(types.FunctionType(code, _StaticStep.forward.__globals__), step)
    return torch.compile(step, fullgraph=True, dynamic=False)


_COMPILES = 0
# Compiled decode steps made so far in this process (names each one's code object).


def _inductor_options(batch: int):
    """cpp_wrapper: the graph's kernels are launched from generated C++, not Python. freezing: weights
    become constants, the products prepacked. At batch 1, max_autotune with Inductor's own C++ GEMM
    template next to ATen: on an AMD EPYC its autotuning timed the template 3-5x faster than MKL for each
    of the step's products, and the compiled step went from 2.5x to ~6x HF generate (docs/LOG.md
    2026-12-04). Set around the compiling call, not passed as
    torch.compile(options=…): freezing given that way was not applied (batch 16 as slow as without it)."""
    import torch._inductor.config as inductor_config

    extra = {}
    if batch == 1:  # and without printing its per-choice timing tables to stderr
        extra = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                 "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
    return inductor_config.patch(cpp_wrapper=True, freezing=True, **extra)


def _mark_symbolic(args: tuple, batch: int) -> None:
    """Compile the cache length, the attended span and (above batch 1) the batch as symbolic sizes: one
    graph for every step and cache. A symbolic batch also makes Inductor prepack the products for oneDNN
    rather than MKL, 1.6-3x faster for the step's products at batch 16 on an AMD EPYC (docs/LOG.md)."""
    tok, _, rope_pos, ks, vs, mask, span = args
    mark = torch._dynamo.mark_dynamic
    mark(span, 0)
    for t in (*ks, *vs):
        mark(t, 2)
        if batch > 1:
            mark(t, 0)
    if mask is not None:
        mark(mask, 1)
    if batch > 1:  # batch 1 would be specialised anyway (Dynamo's 0/1 rule); a (1,) tensor stays static
        mark(tok, 0)
        if mask is not None:
            mark(mask, 0)
            mark(rope_pos, 0)


def _decode_compiled(model: Transformer, tok: torch.Tensor, cache: KVCache, positions, attention_mask):
    """The packed step compiled by Inductor: opt-in (DIJI_KERNELS=decode:compiled), for long `generate`
    runs on fixed weights (`diji generate`/`eval`, benchmarks); `diji serve`'s engine runs its own slot cache.

    Costs: a compile of ~10-30 s per (batch 1 or more, ragged, threads), logged; and, because Inductor
    freezes the weights to prepack them, a *second copy of the matrices* per compiled shape (what one copy
    of the weights at serve time gave up — hence opt-in). The frozen weights are checked against the
    parameters' version counters once per generate call, and recompiled when they changed (an optimizer
    step): correct for training loops, but each update costs a compile. A compile failure (no C++
    compiler, an Inductor error) is a recorded fallback to the eager packed step, once per decoder."""
    dec, checked = _decoder_for(model, cache)
    if dec is None:
        return _decode_reference(model, tok, cache, positions, attention_mask)
    if checked:  # once per cache (one generate() call): the weights' versions
        state = dec.__dict__.setdefault("compiled", {"graphs": {}, "failed": None, "seconds": 0.0})
        version = _weights_version(dec)
        if state.get("version") != version:
            state["graphs"].clear()  # frozen constants of older weights
            state["version"] = version
    state = dec.__dict__["compiled"]
    start = cache.length
    if start >= cache.max_len:
        raise ValueError(f"KV cache full: {start} + 1 tokens exceed its {cache.max_len} positions")
    B = tok.shape[0]
    key = (min(B, 2), attention_mask is not None, torch.get_num_threads())
    fn = _compiled_fn(dec, key)
    if fn is None:
        return dec.step(tok, cache, positions, attention_mask)
    at = torch.tensor([start], device=tok.device)
    rope_pos = positions[:, 0] if positions is not None else at
    span = torch.empty(start + 1, dtype=torch.uint8, device=tok.device)  # its length is what counts
    args = (tok[:, 0], at, rope_pos, cache.k, cache.v, attention_mask, span)
    if key not in state["graphs"]:
        _mark_symbolic(args, B)
        t0 = time.perf_counter()
        try:
            with _inductor_options(B), warnings.catch_warnings():
                # Inductor's autotuner calls the deprecated Tensor.storage(): not the user's business
                warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
                logits = fn(*args)
        except Exception as e:  # noqa: BLE001 — any compile error (Inductor, the C++ compiler) → eager
            state["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            FALLBACKS.record("kernel:decode:compiled:cpu", f"decode:compiled failed to compile "
                             f"({state['failed']}); using the packed step")
            return dec.step(tok, cache, positions, attention_mask)
        seconds = time.perf_counter() - t0
        state["seconds"] += seconds
        state["graphs"][key] = fn
        log.info("decode:compiled: compiled the step for batch %s, ragged %s, %d threads in %.1f s",
                 "1" if B == 1 else "2+", *key[1:], seconds)
    else:
        # One graph per compiled function (a fresh code object each) and inputs that match its key by
        # construction: Dynamo's guards (~60-150 µs a step) have nothing to choose between, so skip them.
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            logits = fn(*args)
    cache._pending = 1  # the step wrote position `start` of every layer itself (index_copy_)
    cache.advance()
    return logits


def compiled_decode_stats(model: Transformer) -> dict:
    """What the compiled decode did for this model: graphs compiled, total compile seconds, failure reason."""
    dec = _PACKED.get(model)
    state = dec.__dict__.get("compiled") if dec is not None else None
    if state is None:
        return {"graphs": 0, "compile_s": 0.0, "failed": None}
    return {"graphs": len(state["graphs"]), "compile_s": round(state["seconds"], 2), "failed": state["failed"]}


def _register_decode() -> None:
    if "decode" not in REGISTRY.ops():
        REGISTRY.register("decode", "reference", _decode_reference, why="the model's own forward, one token")
        REGISTRY.register("decode", "packed", _decode_packed, device_types=("cpu",), priority=10,
                          why="pre-transposed fused qkv / gate|up weights, cached RoPE, no KV copies")
        REGISTRY.register("decode", "compiled", _decode_compiled, device_types=("cpu",), priority=20,
                          opt_in=True, slow_start=True,
                          why="the packed step compiled whole by Inductor (C++ wrapper, frozen weights)")


def decode_step(model: Transformer, tok: torch.Tensor, cache: KVCache, positions=None, attention_mask=None):
    """Logits (B, V) for one new token per row, through the decode implementation chosen for the device."""
    _register_decode()
    dtype = model.model.embed_tokens.weight.dtype
    return REGISTRY.run("decode", tok.device.type, dtype, None, model, tok, cache, positions, attention_mask)


DECODE_THREADS_ENV = "DIJI_DECODE_THREADS"
SMALL_STEP_MACS = 256 * 1024 * 1024
"""Decode steps with fewer multiply-adds than this run on one thread (see `decode_threads`)."""


def decode_threads(model: Transformer, batch: int) -> int:
    """Threads for the decode loop: 1 for small steps, else the process setting; DIJI_DECODE_THREADS forces it.

    A decode step is ~10 ops per layer on (B, C) rows: each is microseconds of work, so an intra-op thread
    pool's fork/join per op costs more than it saves, and on a shared CPU a descheduled worker stalls
    every op. Measured here (docs/LOG.md 2026-12-03, quickstart size, load ~4 on 2 cores): 2 threads
    decode 8x slower at batch 1 and 5x slower at batch 16 than 1 thread. Prefill keeps every thread.
    The compiled decode (a few dozen fused kernels a step, not ~150 ops) keeps every thread too: on a
    quiet 2-core AMD EPYC, 2 threads ran it 1.3x faster at batch 1 and ~1.7x at batch 16 (docs/LOG.md)."""
    forced = os.environ.get(DECODE_THREADS_ENV)
    if forced:
        try:
            return max(1, int(forced))
        except ValueError:
            raise DijiError(f"{DECODE_THREADS_ENV} must be a positive integer, got '{forced}'") from None
    weight = model.model.embed_tokens.weight
    _register_decode()
    if REGISTRY.choose("decode", weight.device.type, weight.dtype).impl.name == "compiled":
        return torch.get_num_threads()
    cfg = model.config
    macs = batch * (cfg.num_params(include_embedding=False, active=True) + cfg.vocab_size * cfg.hidden_size)
    return 1 if macs < SMALL_STEP_MACS else torch.get_num_threads()


@contextlib.contextmanager
def _threads(n: int):
    saved = torch.get_num_threads()
    if n != saved:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


@dataclass
class Generation:
    tokens: list[int]
    """Generated token ids, without the prompt and without the stop token."""
    finish_reason: str
    """"stop" (a stop token was produced) or "length" (max_new_tokens reached)."""
    stop_token: int | None = None
    """The stop token that ended the sequence (None when finish_reason is "length")."""


@torch.inference_mode()
def generate(
    model: Transformer, prompts: list[list[int]], params: SamplingParams, pad_id: int = 0, n: int = 1,
    row_seeds: list[int] | None = None,
) -> list[Generation]:
    """Generate continuations for a batch of token-id prompts with one shared KV cache.

    `n` > 1 samples n continuations of every prompt (results prompt-major: all of prompt 0's first):
    each prompt is prefilled once and its cache copied to its n rows, so a GRPO group of G samples
    costs one prompt forward, not G. `row_seeds` (one per result row, instead of `params.seed`) gives
    every row its own random stream, so a row's sample does not depend on which rows share its batch —
    what lets data-parallel ranks each sample their part of a batch and still match one process.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    B, P = len(prompts) * n, max(len(p) for p in prompts)
    total = P + params.max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({P} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
            f"context of {model.config.max_position_embeddings} tokens"
        )
    if params.max_new_tokens == 0:
        return [Generation([], "length") for _ in prompts]
    generator = None
    if row_seeds is not None:
        if len(row_seeds) != B:
            raise ValueError(f"row_seeds needs one seed per result row ({B}), got {len(row_seeds)}")
        generator = [torch.Generator(device=device).manual_seed(s) for s in row_seeds]
    elif params.seed is not None:
        generator = torch.Generator(device=device).manual_seed(params.seed)

    ragged = any(len(p) != P for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    attn = positions = None
    if ragged:
        attn = torch.zeros((len(prompts), total), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            attn[i, P - len(p) : P] = 1
        positions = (attn[:, :P].cumsum(-1) - 1).clamp_min(0)

    cache = KVCache(model.config, len(prompts), total, device, dtype)
    logits = model(ids, cache=cache, position_ids=positions, attention_mask=attn)[:, -1]
    if n > 1:  # copy each prompt's cache, last logits and mask to its n sample rows
        rows = torch.arange(len(prompts), device=device).repeat_interleave(n)
        cache.select(rows)
        logits = logits.index_select(0, rows)
        attn = attn.index_select(0, rows) if attn is not None else None
    if ragged:
        next_pos = attn[:, :P].sum(-1)  # (B,) position of each row's next token
    stop = torch.tensor(sorted(set(params.stop_ids)), device=device) if params.stop_ids else None
    out = torch.empty((B, params.max_new_tokens), dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with _threads(decode_threads(model, B)):
        n = _decode_loop(model, params, logits, cache, out, done, stop, generator, pad_id, attn, P,
                         next_pos if ragged else None)
    results = []
    stops = set(params.stop_ids)
    for row in out[:, :n].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), None)
        results.append(Generation(row[:cut], "stop", row[cut]) if cut is not None else Generation(row, "length"))
    return results


def _decode_loop(model, params, logits, cache, out, done, stop, generator, pad_id, attn, P, next_pos) -> int:
    """Sample, then decode one token per row, until every row stopped or max_new_tokens; returns the steps."""
    ragged = next_pos is not None
    n = 0
    for step in range(params.max_new_tokens):
        tok = sample(logits, params.temperature, params.top_k, params.top_p, generator)
        n = step + 1
        if stop is not None:  # without stop ids no row ends early: skip the bookkeeping (a sync per step)
            tok = tok.masked_fill(done, pad_id)
            done |= torch.isin(tok, stop)
        out[:, step] = tok
        if n == params.max_new_tokens or (stop is not None and bool(done.all())):
            break
        if ragged:
            attn[:, P + step] = 1
            logits = decode_step(model, tok[:, None], cache, next_pos[:, None], attn)
            next_pos = next_pos + 1
        else:
            logits = decode_step(model, tok[:, None], cache)
    return n

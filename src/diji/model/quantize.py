"""Weight-only int8 models: every matrix as int8 rows with one float scale per output channel.

    diji quantize CKPT --out DIR        (diji/deploy_commands.py writes and reads the directory)

What is quantised: the token embedding (per row, which is per output channel of a tied lm_head), every
linear layer of the blocks and an untied lm_head. What stays float: norms and biases (tiny, and
sensitive). The int8 matmul goes through the kernel registry's `int8_linear` op (kernels/quant.py),
whose reference dequantises and runs an ordinary linear.

On-disk format (a checkpoint directory like any other, DESIGN.md):
- `model.safetensors`: for each quantised matrix `NAME.weight` an int8 tensor (out, in) and
  `NAME.weight_scale` float32 (out,), w ≈ weight · weight_scale[:, None]; all other tensors as saved;
- `config.json`: the family's HF config plus `"diji": {"quantization": QUANT}` (QUANT below); transformers
  cannot read the int8 layout, so `export-hf` refuses the directory (export the unquantised checkpoint,
  or use `export-gguf --type q8_0` for llama.cpp).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from diji.errors import DijiError
from diji.kernels.quant import quantize_rows
from diji.kernels.registry import REGISTRY
from diji.model.transformer import Transformer

QUANT: dict[str, Any] = {"method": "int8_weight_only", "granularity": "per_output_channel",
                         "scheme": "symmetric_absmax", "scale_dtype": "float32", "format_version": 1}
"""The `diji.quantization` entry of config.json."""
SCALE = "weight_scale"


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 (out, in) with a float scale per output row."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer(SCALE, scale)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return REGISTRY.call("int8_linear", x, self.weight, self.weight_scale, self.bias)


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with a per-row scale; a lookup dequantises only its rows."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer(SCALE, scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids].to(self.weight_scale.dtype) * self.weight_scale[ids][..., None]


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear | Int8Embedding) for m in model.modules())


def _replace_linears(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            q, s = quantize_rows(child.weight)
            b = child.bias.detach().clone() if child.bias is not None else None
            setattr(module, name, Int8Linear(q, s.to(child.weight.dtype), b))
        else:
            _replace_linears(child)


@torch.no_grad()
def quantize_model(model: Transformer) -> Transformer:
    """Quantise `model` in place (and return it): embedding, block linears, lm_head; norms stay float."""
    cfg = model.config
    if cfg.n_routed_experts:
        raise DijiError("diji quantize covers dense models; MoE experts are stacked tensors it does not quantise yet")
    if is_quantized(model):
        raise DijiError("the model is already quantised")
    emb = model.model.embed_tokens
    q, s = quantize_rows(emb.weight)
    dtype = emb.weight.dtype
    model.model.embed_tokens = Int8Embedding(q, s.to(dtype))
    _replace_linears(model.model.layers)
    if cfg.tie_word_embeddings:  # the embedding's per-row scales are the head's per-output-channel scales
        model.lm_head = Int8Linear(model.model.embed_tokens.weight, model.model.embed_tokens.weight_scale)
    else:
        q, s = quantize_rows(model.lm_head.weight)
        model.lm_head = Int8Linear(q, s.to(dtype))
    return model.eval()


def quantized_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The tensors to save: int8 weights, their scales (float32), norms and biases; a tied head once."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        state.pop(f"lm_head.{SCALE}", None)
    return {k: (v.float() if v.is_floating_point() and k.endswith(SCALE) else v) for k, v in state.items()}


def model_from_quantized_state(model: Transformer, state: dict[str, torch.Tensor],
                               dtype: torch.dtype | None = None) -> Transformer:
    """Turn a freshly built float `model` into the int8 model whose tensors are `state` (strict)."""
    dtype = dtype or torch.float32
    with torch.no_grad():
        quantize_model(model)  # builds the module structure; every tensor is overwritten below
    if model.config.tie_word_embeddings:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"],
                 f"lm_head.{SCALE}": state[f"model.embed_tokens.{SCALE}"]}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DijiError(f"the int8 weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, t in model.state_dict().items():
        if name.endswith(".weight") and not t.is_floating_point() and t.dtype != torch.int8:
            raise DijiError(f"int8 checkpoint tensor {name} has dtype {t.dtype}, expected int8")
    if model.config.tie_word_embeddings:  # share one copy again (load_state_dict copied into both)
        model.lm_head.weight = model.model.embed_tokens.weight
        model.lm_head.weight_scale = model.model.embed_tokens.weight_scale
    for m in model.modules():
        for n, b in m.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(m, n, b.to(dtype))
        for _n, p in m.named_parameters(recurse=False):
            p.data = p.data.to(dtype)
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (a tied tensor counts once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())

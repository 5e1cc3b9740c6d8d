"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021, arXiv:2106.09685).

    y = x Wᵀ + (α / r) · dropout(x) Aᵀ Bᵀ        W frozen (out×in), A (r×in), B (out×r)

B starts at zero, so an adapted model starts exactly equal to its base (§4.1). `LoRALinear` subclasses
`nn.Linear` and keeps the base weight under its own name (`q_proj.weight`), so an adapter checkpoint is
the base state dict plus `lora_A`/`lora_B` tensors, and its lineage.json records the LoRA config.
`merge_lora` folds the update into W (W' = W + (α/r)·B A) and returns plain `nn.Linear` layers: the
merged checkpoint loads anywhere a base checkpoint does and gives the adapter's outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from diji.config import to_dict
from diji.errors import DijiError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 0
    """Adapter rank r; 0 = full fine-tuning (no adapters)."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (0 = off)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Linear layers to adapt, by name: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."""

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0 = full fine-tuning), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.target_modules if t not in TARGETS]
        if bad or not self.target_modules:
            raise ValueError(f"lora.target_modules must be a non-empty subset of {', '.join(TARGETS)}, got {bad or '[]'}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class LoRALinear(nn.Linear):
    """A frozen `nn.Linear` plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, generator=None) -> None:
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        # A as nn.Linear's default (Kaiming-uniform, a=√5), B zero: the reference implementation's choice.
        bound = 1 / math.sqrt(base.in_features)
        with torch.no_grad():
            self.lora_A.copy_(torch.rand(self.lora_A.shape, generator=generator) * 2 * bound - bound)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.double() @ self.lora_A.double()) * self.scaling
            out.weight.copy_((self.weight.double() + delta).to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> list[str]:
    """Wrap the target linears of `model` in place and freeze everything else; returns the wrapped names."""
    if not cfg.enabled:
        return []
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in cfg.target_modules and type(child) is nn.Linear:
                wrapper = LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout, gen)
                wrapper.train(child.training)  # a fresh module defaults to train mode (dropout on)
                setattr(module, child_name, wrapper)
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise DijiError(f"lora.target_modules {list(cfg.target_modules)} matched no linear layer of the model")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear with its merged plain nn.Linear (in place); returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged().train(child.training))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counting tied tensors once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def adapter_config(ckpt: str | Path) -> LoRAConfig | None:
    """The LoRA config recorded in a checkpoint's lineage, or None for a plain checkpoint."""
    from diji.config import from_dict
    from diji.train.checkpoint import read_lineage

    raw = read_lineage(ckpt).get("lora")
    return from_dict(LoRAConfig, raw, prefix="lora") if raw else None


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load any checkpoint as a plain model: adapter checkpoints are merged on load. Returns `Loaded`."""
    from diji.model.transformer import Transformer
    from diji.train.checkpoint import Loaded, load_weights, read_model_config, verify_checkpoint

    ckpt = Path(ckpt)
    lineage = verify_checkpoint(ckpt)
    model = Transformer(read_model_config(ckpt))
    lora = adapter_config(ckpt)
    if lora is not None:
        apply_lora(model, lora)
    load_weights(model, ckpt)
    if lora is not None:
        merge_lora(model)
    return Loaded(model.to(device), ckpt, lineage, ckpt / "tokenizer.json")


def merge_checkpoint(adapter_ckpt: str | Path, out: str | Path) -> Path:
    """`diji lora merge`: an adapter checkpoint → a plain checkpoint with the update folded in."""
    from diji.train.checkpoint import read_lineage, save_checkpoint

    adapter_ckpt = Path(adapter_ckpt)
    lora = adapter_config(adapter_ckpt)
    if lora is None:
        raise DijiError(f"{adapter_ckpt} is not a LoRA adapter checkpoint (its lineage.json has no 'lora' entry)")
    loaded = load_model(adapter_ckpt)
    parent = read_lineage(adapter_ckpt)
    lineage = {
        "stage": "lora-merge",
        "parent": str(adapter_ckpt.resolve()),
        "parent_sha256": parent.get("weights_sha256"),
        "data_manifest_sha256": parent.get("data_manifest_sha256"),
        "config": parent.get("config"),
        "merged_lora": to_dict(lora),
        "step": parent.get("step"),
        "tokens_seen": parent.get("tokens_seen"),
        "metrics": parent.get("metrics", {}),
    }
    return save_checkpoint(out, loaded.model, loaded.tokenizer_file, lineage)

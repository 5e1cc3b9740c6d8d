"""Conformance cases per op: representative and deliberately odd shapes, built in float64 on the CPU.

A case is the list of arguments for one call; floating tensors marked in `grad` get gradients checked.
An op registered without a spec here gets a clear "no conformance cases" failure from the runner, so a
new op cannot slip in untested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diji.kernels import reference
from diji.kernels.rope import RopeScaling


@dataclass
class Case:
    name: str
    """Short description of the shape, shown in the conformance table."""
    args: list
    """Positional arguments in float64 on the CPU (cast to the dtype and device under test)."""
    grad: tuple[int, ...] = ()
    """Indices of args whose gradients are compared."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments, passed unchanged."""
    cast: tuple[int, ...] | None = None
    """Indices of floating args to cast to the dtype under test (None = all floating args)."""


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64) * scale


def _rms_norm() -> list[Case]:
    return [
        Case("x(4,16,64)", [_randn(4, 16, 64, seed=1), 1 + _randn(64, seed=2, scale=0.1), 1e-5], grad=(0, 1)),
        Case("x(3,5,33) odd", [_randn(3, 5, 33, seed=3, scale=3), 1 + _randn(33, seed=4, scale=0.1), 1e-6],
             grad=(0, 1)),
    ]


def _rope_tables(t: int, d: int, batch: int | None = None, offset: int = 0):
    pos = torch.arange(offset, offset + t)
    if batch is not None:
        pos = pos[None].repeat(batch, 1) + torch.arange(batch)[:, None]
    return reference.rope_cos_sin(pos, d, 10000.0, torch.float64)


def _apply_rope() -> list[Case]:
    cos, sin = _rope_tables(16, 32)
    cos3, sin3 = _rope_tables(7, 10, batch=3, offset=5)
    return [
        Case("x(2,4,16,32)", [_randn(2, 4, 16, 32, seed=5), cos, sin], grad=(0,)),
        Case("x(3,2,7,10) per-row positions", [_randn(3, 2, 7, 10, seed=6), cos3, sin3], grad=(0,)),
    ]


def _rope_cos_sin() -> list[Case]:
    return [
        Case("positions(64) d=32", [torch.arange(64), 32, 10000.0, torch.float64], cast=()),
        Case("positions(2,9)+500 d=10", [torch.arange(18).view(2, 9) + 500, 10, 500000.0, torch.float64], cast=()),
        Case("positions(40) d=16 llama3", [torch.arange(40), 16, 500000.0, torch.float64, RopeScaling(
            "llama3", factor=8.0, original_max_position_embeddings=32)], cast=()),
        Case("positions(40) d=16 yarn", [torch.arange(40), 16, 10000.0, torch.float64, RopeScaling(
            "yarn", factor=4.0, original_max_position_embeddings=16, mscale=1.0, mscale_all_dim=0.5)], cast=()),
    ]


def _attention() -> list[Case]:
    mask = torch.ones(2, 1, 5, 9, dtype=torch.bool).tril(diagonal=4)
    mask[0, :, :, :2] = False  # left padding in row 0
    return [
        Case("q(2,4,16,32) kv(2,2,…) causal", [_randn(2, 4, 16, 32, seed=7), _randn(2, 2, 16, 32, seed=8),
                                                _randn(2, 2, 16, 32, seed=9)], grad=(0, 1, 2)),
        Case("decode q(3,6,1,16) kv(3,3,11,16)", [_randn(3, 6, 1, 16, seed=10), _randn(3, 3, 11, 16, seed=11),
                                                   _randn(3, 3, 11, 16, seed=12)], grad=(0, 1, 2)),
        Case("masked q(2,2,5,8) kv len 9", [_randn(2, 2, 5, 8, seed=13), _randn(2, 1, 9, 8, seed=14),
                                            _randn(2, 1, 9, 8, seed=15)], grad=(0, 1, 2), kwargs={"mask": mask}),
    ]


def _swiglu() -> list[Case]:
    return [
        Case("(2,16,128)", [_randn(2, 16, 128, seed=16), _randn(2, 16, 128, seed=17)], grad=(0, 1)),
        Case("(3,5,37) odd, large gate", [_randn(3, 5, 37, seed=18, scale=6), _randn(3, 5, 37, seed=19)],
             grad=(0, 1)),
    ]


def _targets(n: int, v: int, seed: int, ignore_every: int = 0) -> torch.Tensor:
    t = torch.randint(0, v, (n,), generator=_g(seed))
    if ignore_every:
        t[::ignore_every] = -100
    return t


def _cross_entropy() -> list[Case]:
    return [
        Case("logits(64,300)", [_randn(64, 300, seed=20, scale=2), _targets(64, 300, 21)], grad=(0,)),
        Case("logits(1,1100,97) ignored, 2 chunks", [_randn(1, 1100, 97, seed=22, scale=4),
                                                       _targets(1100, 97, 23, ignore_every=3).view(1, 1100)],
             grad=(0,)),
    ]


def _linear_cross_entropy() -> list[Case]:
    return [
        Case("h(64,32) W(300,32)", [_randn(64, 32, seed=24), _randn(300, 32, seed=25, scale=0.2),
                                    _targets(64, 300, 26)], grad=(0, 1)),
        Case("h(2,550,24) W(97,24) ignored, 2 chunks", [_randn(2, 550, 24, seed=27), _randn(97, 24, seed=28, scale=0.3),
                                                         _targets(1100, 97, 29, ignore_every=4).view(2, 550)],
             grad=(0, 1)),
    ]


SPECS: dict[str, Callable[[], list[Case]]] = {
    "rms_norm": _rms_norm,
    "rope_cos_sin": _rope_cos_sin,
    "apply_rope": _apply_rope,
    "attention": _attention,
    "swiglu": _swiglu,
    "cross_entropy": _cross_entropy,
    "linear_cross_entropy": _linear_cross_entropy,
}


def _int8_linear() -> list[Case]:
    from diji.kernels.quant import quantize_rows

    def weights(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, scale = quantize_rows(_randn(out, inp, seed=seed, scale=0.2))
        return q, scale.double()

    w1, s1 = weights(48, 64, 40)
    w2, s2 = weights(96, 128, 41)
    return [
        Case("x(3,7,64) W(48,64) int8 + bias", [_randn(3, 7, 64, seed=42), w1, s1, _randn(48, seed=43)]),
        Case("x(1,1,128) W(96,128) int8, decode-sized", [_randn(1, 1, 128, seed=44), w2, s2]),
    ]


def _decode() -> list[Case]:
    # A whole-model step (model, KV cache, positions): checked end to end against the reference path by
    # tests/kernels/test_decode.py (identical greedy tokens), not by per-op tensors here.
    return []


SPECS["int8_linear"] = _int8_linear
SPECS["decode"] = _decode


def _moe_ffn() -> list[Case]:
    from diji.kernels import moe

    return moe.conformance_cases()


SPECS["moe_ffn"] = _moe_ffn


def register_spec(op: str, cases: Callable[[], list[Case]]) -> None:
    """Add conformance cases for an op registered elsewhere (e.g. the MoE dispatch)."""
    SPECS[op] = cases

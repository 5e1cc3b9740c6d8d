"""RoPE scaling maths (kernels/rope.py) against what transformers computes, and the tables' invariants.

Reference pinned: transformers 5.23.0 (`modeling_rope_utils.ROPE_INIT_FUNCTIONS`), float32 on the CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from diji.kernels import ops, reference, rope
from diji.kernels.rope import RopeScaling

D, THETA, L0 = 32, 10000.0, 64

CASES = {
    "linear": RopeScaling("linear", factor=4.0),
    "dynamic": RopeScaling("dynamic", factor=2.0, original_max_position_embeddings=L0),
    "llama3": RopeScaling("llama3", factor=8.0, original_max_position_embeddings=L0, low_freq_factor=1.0,
                          high_freq_factor=4.0),
    "yarn": RopeScaling("yarn", factor=4.0, original_max_position_embeddings=L0),
    "yarn_deepseek": RopeScaling("yarn", factor=40.0, original_max_position_embeddings=L0, mscale=0.707,
                                 mscale_all_dim=0.707),
    "yarn_untruncated": RopeScaling("yarn", factor=4.0, original_max_position_embeddings=L0, beta_fast=16.0,
                                    beta_slow=2.0, truncate=False),
    "yarn_attention_factor": RopeScaling("yarn", factor=4.0, original_max_position_embeddings=L0,
                                         attention_factor=1.3),
}


def _hf_params(s: RopeScaling) -> dict:
    p = {"rope_type": s.rope_type, "rope_theta": THETA, "factor": s.factor}
    if s.rope_type == "llama3":
        p.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                 original_max_position_embeddings=L0)
    if s.rope_type == "yarn":
        p.update(original_max_position_embeddings=L0, beta_fast=s.beta_fast, beta_slow=s.beta_slow,
                 truncate=s.truncate)
        p.update({k: getattr(s, k) for k in ("mscale", "mscale_all_dim", "attention_factor") if getattr(s, k)})
    return p


@pytest.mark.parametrize("name", CASES)
def test_inverse_frequencies_and_attention_factor_equal_transformers(name):
    transformers = pytest.importorskip("transformers", minversion="5.0")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    s = CASES[name]
    cfg = transformers.LlamaConfig(hidden_size=4 * D, num_attention_heads=4, max_position_embeddings=L0,
                                   rope_parameters=_hf_params(s))
    for seq_len in ((0, 3 * L0) if s.rope_type == "dynamic" else (0,)):
        want, want_factor = ROPE_INIT_FUNCTIONS[s.rope_type](cfg, "cpu", **({"seq_len": seq_len} if seq_len else {}))
        got = rope.inv_freq(D, THETA, s, seq_len)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert rope.attention_factor(s) == pytest.approx(want_factor, rel=1e-12)


def test_scaling_changes_what_it_should():
    plain = rope.inv_freq(D, THETA)
    # linear: every frequency divided by the factor
    torch.testing.assert_close(rope.inv_freq(D, THETA, CASES["linear"]), plain / 4)
    # llama3: the highest frequencies (short wavelengths) untouched, the lowest divided by the factor
    l3 = rope.inv_freq(D, THETA, CASES["llama3"])
    assert l3[0] == plain[0] and l3[-1] == pytest.approx(float(plain[-1]) / 8)
    # dynamic: identical within the trained context, lower frequencies beyond it
    dyn = CASES["dynamic"]
    assert torch.equal(rope.inv_freq(D, THETA, dyn, seq_len=L0), plain)
    assert (rope.inv_freq(D, THETA, dyn, seq_len=4 * L0)[1:] < plain[1:]).all()
    # yarn: attention temperature 0.1·ln(s) + 1; DeepSeek's mscale ratio is 1 when mscale == mscale_all_dim,
    # but its softmax correction is mscale(s, mscale_all_dim)²
    assert rope.attention_factor(CASES["yarn"]) == pytest.approx(0.1 * math.log(4) + 1)
    assert rope.attention_factor(CASES["yarn_deepseek"]) == 1.0
    assert rope.softmax_scale_factor(CASES["yarn_deepseek"]) == pytest.approx((0.0707 * math.log(40) + 1) ** 2)
    assert rope.softmax_scale_factor(CASES["yarn"]) == 1.0 and rope.softmax_scale_factor(None) == 1.0


def test_scaled_tables_through_the_registry_equal_the_reference():
    pos = torch.arange(3 * L0).view(3, L0)
    for s in CASES.values():
        cos, sin = ops.rope_cos_sin(pos, D, THETA, torch.float32, s)
        rc, rs = reference.rope_cos_sin(pos, D, THETA, torch.float32, s)
        assert torch.equal(cos, rc) and torch.equal(sin, rs)
        # cos² + sin² is the squared attention factor for every position and dimension
        torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, rope.attention_factor(s) ** 2))
    # dynamic scaling follows the longest position in the call
    dyn = CASES["dynamic"]
    short, _ = ops.rope_cos_sin(torch.arange(L0), D, THETA, torch.float32, dyn)
    long, _ = ops.rope_cos_sin(torch.arange(2 * L0), D, THETA, torch.float32, dyn)
    assert torch.equal(short, reference.rope_cos_sin(torch.arange(L0), D, THETA)[0])
    assert not torch.allclose(long[:L0], short)


@pytest.mark.parametrize("kwargs,match", [
    ({"rope_type": "longrope"}, "rope_type"),
    ({"rope_type": "linear", "factor": 0.0}, "factor"),
    ({"rope_type": "llama3", "factor": 8.0}, "original_max_position_embeddings"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8, "low_freq_factor": 4.0,
      "high_freq_factor": 1.0}, "high_freq_factor"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 1.0}, "beta_fast"),
])
def test_bad_rope_scaling_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RopeScaling(**kwargs)

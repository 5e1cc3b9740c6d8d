import pytest
import torch

from diji.kernels import reference as ops
from diji.model.transformer import KVCache, ModelConfig, Transformer

TINY = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64)


def model(cfg=TINY, seed=0):
    return Transformer(cfg).eval() if seed is None else _seeded(cfg, seed)


def _seeded(cfg, seed):
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    return m.eval()


def test_causal_masking_later_tokens_never_change_earlier_logits():
    m = model()
    x = torch.randint(0, TINY.vocab_size, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, TINY.vocab_size, (2, 7))
    with torch.no_grad():
        a, b = m(x), m(y)
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_kv_cache_decode_equals_full_forward():
    m = model()
    x = torch.randint(0, TINY.vocab_size, (3, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(TINY, 3, 20, "cpu", torch.float32)
        parts = [m(x[:, :7], cache=cache)]  # prefill
        parts += [m(x[:, t : t + 1], cache=cache) for t in range(7, 12)]  # token-by-token decode
        parts.append(m(x[:, 12:], cache=cache))  # a chunk after a cache (explicit mask path)
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
    assert cache.length == 20


def test_gqa_with_as_many_kv_heads_as_heads_is_plain_mha():
    cfg = ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=64)
    m = _seeded(cfg, 1)
    attn = m.model.layers[0].self_attn
    x = torch.randn(2, 10, 32)
    pos = torch.arange(10)
    cos, sin = ops.rope_cos_sin(pos, 8, cfg.rope_theta)
    with torch.no_grad():
        got = attn(x, cos, sin, None, None)
        q = ops.apply_rope(attn.q_proj(x).view(2, 10, 4, 8).transpose(1, 2), cos, sin)
        k = ops.apply_rope(attn.k_proj(x).view(2, 10, 4, 8).transpose(1, 2), cos, sin)
        v = attn.v_proj(x).view(2, 10, 4, 8).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / 8**0.5
        scores = scores.masked_fill(torch.ones(10, 10).triu(1).bool(), float("-inf"))
        want = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32))
    assert (got - want).abs().max() < 1e-5


def test_gqa_equals_mha_with_repeated_kv_weights():
    """A GQA model equals an MHA model whose k/v projections repeat each KV head's weights."""
    gqa = _seeded(TINY, 2)
    mha_cfg = ModelConfig(**{**TINY.__dict__, "num_key_value_heads": TINY.num_attention_heads})
    mha = Transformer(mha_cfg).eval()
    state = gqa.state_dict()
    rep = TINY.num_attention_heads // TINY.num_key_value_heads
    D = TINY.dim_per_head
    for name in list(state):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            w = state[name].view(TINY.num_key_value_heads, D, -1)
            state[name] = w.repeat_interleave(rep, 0).reshape(-1, w.shape[-1])
    mha.load_state_dict(state)
    x = torch.randint(0, TINY.vocab_size, (2, 12))
    with torch.no_grad():
        assert (gqa(x) - mha(x)).abs().max() < 1e-5


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied = Transformer(TINY)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    untied = Transformer(ModelConfig(**{**TINY.__dict__, "tie_word_embeddings": False}))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert TINY.num_params() == sum(p.numel() for p in tied.parameters())
    assert untied.config.num_params() == sum(p.numel() for p in untied.parameters())


def test_init_weights_is_seeded():
    a, b = _seeded(TINY, 5), _seeded(TINY, 5)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), n


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_size": 30}, "hidden_size"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_model_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY.__dict__, **kwargs})


def test_left_padded_batch_matches_unpadded_rows():
    m = model()
    a = torch.randint(3, TINY.vocab_size, (1, 5))
    b = torch.randint(3, TINY.vocab_size, (1, 9))
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        out = m(ids, position_ids=pos, attention_mask=mask)
        assert (out[0, 4:] - m(a)[0]).abs().max() < 1e-5
        assert (out[1] - m(b)[0]).abs().max() < 1e-5


def test_new_config_fields_round_trip_through_toml_and_old_configs_keep_their_defaults():
    import tomllib

    from diji.config import dumps_toml, from_dict, to_dict
    from diji.kernels.rope import RopeScaling
    from diji.model.hf import from_hf_config

    cfg = ModelConfig(**{**TINY.__dict__, "qk_norm": True, "head_dim": 24, "rope_scaling": RopeScaling(
        "yarn", factor=4.0, original_max_position_embeddings=32, mscale=0.7, mscale_all_dim=0.7)})
    assert hash(cfg) == hash(ModelConfig(**cfg.__dict__))  # frozen all the way down
    text = dumps_toml({"model": to_dict(cfg)})
    assert "[model.rope_scaling]" in text
    assert from_dict(ModelConfig, tomllib.loads(text)["model"]) == cfg
    # A checkpoint written before these fields existed (model_type "diji", no rope_scaling / qk_norm keys)
    old = {k: v for k, v in to_dict(TINY).items() if k not in ("rope_scaling", "qk_norm", "group_scoring")}
    assert from_hf_config({"model_type": "diji", **old}) == TINY
    assert TINY.rope_scaling == RopeScaling() and not TINY.qk_norm
    # a model with no transformers equivalent (model_type diji) keeps its rope table through config.json
    import json

    from diji.model.hf import to_hf_config

    native = ModelConfig(**{**cfg.__dict__, "n_routed_experts": 4, "n_shared_experts": 1, "qk_norm": False})
    hf = json.loads(json.dumps(to_hf_config(native, 1, 2, 0)))
    assert hf["model_type"] == "diji" and from_hf_config(hf) == native


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"qk_norm": True, "kv_lora_rank": 16}, "qk_norm"),
        ({"group_scoring": "mean"}, "group_scoring"),
        ({"rope_scaling": {"rope_type": "yarn"}}, "rope_scaling"),
    ],
)
def test_bad_new_fields_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**TINY.__dict__, **kwargs})


def test_qk_norm_normalises_each_head_before_rope():
    """With q/k norms every query and key head has RMS 1 (times the norm weight) before rotation, so scaling
    the q/k projections leaves the output unchanged — the point of QK-norm."""
    cfg = ModelConfig(**{**TINY.__dict__, "qk_norm": True, "rms_norm_eps": 1e-12})  # eps would blur the invariance
    m = _seeded(cfg, 4)
    assert cfg.num_params() == sum(p.numel() for p in m.parameters())
    x = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        before = m(x)
        for blk in m.model.layers:
            blk.self_attn.q_proj.weight.mul_(7.0)
            blk.self_attn.k_proj.weight.mul_(0.2)
        torch.testing.assert_close(m(x), before, rtol=1e-4, atol=1e-4)


def test_family_maps_configs_to_the_model_type_that_computes_them():
    from diji.kernels.rope import RopeScaling
    from diji.model.hf import NATIVE, family

    moe = {"n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    mla = {"kv_lora_rank": 16, "qk_rope_head_dim": 8}
    cases = [
        ({}, "llama"), ({"attention_bias": True}, "qwen2"), ({"qk_norm": True}, "qwen3"),
        ({"qk_norm": True, **moe, "scoring_func": "softmax", "moe_balance": "aux_loss"}, "qwen3_moe"),
        ({**mla}, "deepseek_v3"), ({**mla, **moe}, "deepseek_v3"),
        ({**mla, **moe, "scoring_func": "softmax", "norm_topk_prob": False, "moe_balance": "none"}, "deepseek_v2"),
        # no transformers equivalent: each says why
        ({"qk_norm": True, "attention_bias": True}, NATIVE), ({**moe}, NATIVE),
        ({"qk_norm": True, **moe, "scoring_func": "softmax", "moe_balance": "bias"}, NATIVE),
        ({**mla, **moe, "scoring_func": "softmax", "moe_balance": "none"}, NATIVE),  # V2 never renormalises
        ({**mla, **moe, "n_group": 2, "group_scoring": "max"}, NATIVE),
        ({"rope_scaling": RopeScaling("dynamic", 2.0, TINY.max_position_embeddings)}, "llama"),
        ({"rope_scaling": RopeScaling("dynamic", 2.0, 16)}, NATIVE),  # would scale from another length
    ]
    for kwargs, want in cases:
        got, why = family(ModelConfig(**{**TINY.__dict__, **kwargs}))
        assert got == want, kwargs
        assert bool(why) == (want == NATIVE), kwargs

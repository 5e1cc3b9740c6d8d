"""The packed decode fast path agrees with the reference decode (the model's own forward)."""

import pytest
import torch

from diji.kernels.registry import REGISTRY
from diji.model.generate import PackedDecoder, SamplingParams, generate
from diji.model.transformer import KVCache, ModelConfig, Transformer


def tiny(bias=False, tie=True):
    cfg = ModelConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64,
                      attention_bias=bias, tie_word_embeddings=tie)
    m = Transformer(cfg)
    m.init_weights(seed=3)
    with torch.no_grad():  # non-trivial biases and norms so a packing mistake cannot hide
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return m.eval()


def test_packed_step_logits_equal_reference_step():
    for bias, tie in ((False, True), (True, False)):
        m = tiny(bias, tie)
        ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            c1 = KVCache(m.config, 3, 20, "cpu", torch.float32)
            c2 = KVCache(m.config, 3, 20, "cpu", torch.float32)
            m(ids, cache=c1)
            m(ids, cache=c2)
            packed = PackedDecoder(m)
            tok = ids[:, -1:]
            for _ in range(5):
                want = m(tok, cache=c1)[:, -1]
                got = packed.step(tok, c2, None, None)
                assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
                tok = want.argmax(-1, keepdim=True)
            assert c1.length == c2.length == 14


def test_generate_tokens_identical_with_either_decode_path_including_ragged_prompts():
    m = tiny()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    out = {}
    for impl in ("reference", "packed"):
        with REGISTRY.forced({"decode": impl}):
            out[impl] = [g.tokens for g in generate(m, prompts, SamplingParams(max_new_tokens=12))]
            out[impl + "1"] = [g.tokens for g in generate(m, prompts[:1], SamplingParams(max_new_tokens=12))]
    assert out["reference"] == out["packed"] and out["reference1"] == out["packed1"]


def test_packed_weights_are_rebuilt_after_the_model_changes():
    m = tiny()
    prompt = [[1, 2, 3, 4]]
    params = SamplingParams(max_new_tokens=6)
    with REGISTRY.forced({"decode": "packed"}):
        generate(m, prompt, params)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(-1.5)
        after = generate(m, prompt, params)[0].tokens
    with REGISTRY.forced({"decode": "reference"}):
        assert generate(m, prompt, params)[0].tokens == after


def test_generate_sees_weights_a_fused_optimizer_changed_in_place():
    """Fused AdamW writes parameters without bumping their version counters; packing must not go stale."""
    m = tiny()
    prompt = [[1, 2, 3, 4]]
    params = SamplingParams(max_new_tokens=6)
    with REGISTRY.forced({"decode": "packed"}):
        generate(m, prompt, params)
        opt = torch.optim.AdamW(m.parameters(), lr=0.5, fused=True)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        after = generate(m, prompt, params)[0].tokens
    with REGISTRY.forced({"decode": "reference"}):
        assert generate(m, prompt, params)[0].tokens == after


def test_small_decode_steps_run_on_one_thread_and_the_env_forces_it(monkeypatch):
    from diji.errors import DijiError
    from diji.model.generate import DECODE_THREADS_ENV, decode_threads

    m = tiny()
    assert decode_threads(m, 16) == 1
    monkeypatch.setenv(DECODE_THREADS_ENV, "3")
    assert decode_threads(m, 1) == 3
    monkeypatch.setenv(DECODE_THREADS_ENV, "many")
    with pytest.raises(DijiError, match=DECODE_THREADS_ENV):
        decode_threads(m, 1)
    monkeypatch.delenv(DECODE_THREADS_ENV)
    before = torch.get_num_threads()
    generate(m, [[1, 2, 3]], SamplingParams(max_new_tokens=3))
    assert torch.get_num_threads() == before  # restored after the decode loop

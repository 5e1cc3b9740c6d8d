import pytest
import torch

from diji.config import load_config
from diji.model.generate import SamplingParams, generate
from diji.model.transformer import KVCache, ModelConfig, Transformer
from diji.observe.metrics import read_metrics
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides

MLA = ModelConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=64, kv_lora_rank=24, q_lora_rank=32,
                  qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)


def model(cfg=MLA, seed=0):
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    with torch.no_grad():  # larger weights than the init, so attention is far from uniform
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return m.eval()


def test_cache_holds_the_latent_and_is_smaller_than_gqa():
    cache = KVCache(MLA, 3, 40, "cpu", torch.float32)
    assert cache.k[0].shape == (3, 1, 40, 24) and cache.v[0].shape == (3, 1, 40, 8)
    gqa = ModelConfig(**{**MLA.__dict__, "kv_lora_rank": 0})
    assert MLA.kv_cache_bytes_per_token(2) == 2 * (24 + 8) * 2
    assert 2 * MLA.kv_cache_bytes_per_token() == gqa.kv_cache_bytes_per_token()  # 32 vs 2 heads × (16 + 16)


def test_cached_decode_absorbed_and_chunked_equal_the_full_forward():
    m = model()
    x = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(MLA, 3, 20, "cpu", torch.float32)
        parts = [m(x[:, :7], cache=cache)]  # prefill
        parts += [m(x[:, t : t + 1], cache=cache) for t in range(7, 12)]  # absorbed single-token decode
        parts.append(m(x[:, 12:], cache=cache))  # a chunk after a cache: expanded latents + explicit mask
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-4
    assert cache.length == 20


def test_yarn_softmax_correction_is_the_same_in_absorbed_decode_and_the_full_forward():
    """YaRN with mscale_all_dim scales MLA's softmax by mscale² (kernels/rope.py): prefill, the absorbed
    single-token path and a chunk after the cache all apply it, and it changes the output."""
    from diji.kernels.rope import RopeScaling

    yarn = RopeScaling("yarn", factor=8.0, original_max_position_embeddings=8, mscale=1.0, mscale_all_dim=1.0)
    cfg = ModelConfig(**{**MLA.__dict__, "rope_scaling": yarn})
    m = model(cfg)
    assert m.model.layers[0].self_attn.q_scale > 1.4
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(cfg, 2, 20, "cpu", torch.float32)
        parts = [m(x[:, :7], cache=cache)] + [m(x[:, t : t + 1], cache=cache) for t in range(7, 12)]
        parts.append(m(x[:, 12:], cache=cache))
        plain = Transformer(MLA).eval()
        plain.load_state_dict(m.state_dict())
        assert (plain(x) - full).abs().max() > 1e-2
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-4


def test_ragged_batch_generation_equals_one_prompt_at_a_time():
    m = model(seed=1)
    prompts = [[5, 9, 11, 40, 3, 2, 8], [7, 1], [60, 61, 62, 63]]
    params = SamplingParams(max_new_tokens=8)
    batched = [g.tokens for g in generate(m, prompts, params)]
    alone = [generate(m, [p], params)[0].tokens for p in prompts]
    assert batched == alone


def test_decoupled_rope_is_relative():
    """RoPE on the decoupled q/k parts is relative: shifting every position by a constant changes nothing."""
    m = model(seed=2)
    x = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        a = m(x, position_ids=torch.arange(12))
        b = m(x, position_ids=torch.arange(12) + 17)
    assert (a - b).abs().max() < 1e-4


def test_mla_config_checks_name_the_field():
    with pytest.raises(ValueError, match="qk_rope_head_dim"):
        ModelConfig(kv_lora_rank=16, qk_rope_head_dim=7)
    with pytest.raises(ValueError, match="model.kv_lora_rank"):
        ModelConfig(kv_lora_rank=-1)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_mla_pretrains_through_the_same_command_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    switch = ["model.kv_lora_rank=16"]  # one switch; the head split defaults from head_dim
    pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "full", steps=12) + switch))
    curve = [loss for _, loss in losses(tmp_path / "full")]
    assert curve[-1] < 0.8 * curve[0]
    from diji.train import pretrain as pretrain_mod

    original = pretrain_mod.PretrainStage.next_batch

    def crash_after_six(self):
        if self.batches.cursor == 6:
            raise RuntimeError("simulated crash")
        return original(self)

    part = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "part", steps=12) + switch)
    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", crash_after_six)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(part)
    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", original)
    pretrain(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")

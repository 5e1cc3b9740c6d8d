import json

import pytest
import torch

from diji.config import load_config
from diji.kernels import moe as kmoe
from diji.kernels.registry import REGISTRY
from diji.model.moe import MoE
from diji.model.transformer import ModelConfig, Transformer
from diji.observe.metrics import read_metrics
from diji.train.checkpoint import latest_checkpoint, load_checkpoint
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=64, n_routed_experts=8, n_shared_experts=1,
                  num_experts_per_tok=2, moe_intermediate_size=16)


def moe_layer(cfg=CFG, seed=0) -> MoE:
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    return m.model.layers[cfg.first_k_dense_replace].mlp


@pytest.mark.parametrize("drop", [False, True])
def test_grouped_dispatch_equals_reference_forward_and_backward(drop):
    x, idx, w, gu, down = kmoe.sample_inputs(seed=3)
    if drop:
        idx = kmoe.capacity_mask(idx, 8, capacity=10)
        assert (idx < 0).any()
    grads = []
    for fn in (kmoe.moe_ffn_reference, kmoe.moe_ffn_grouped):
        args = [t.clone().requires_grad_() for t in (x, w, gu, down)]
        y = fn(args[0], idx, args[1], args[2], args[3])
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append([y.detach()] + [a.grad for a in args])
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() < 1e-5


def test_moe_dispatch_is_a_registered_kernel_with_a_fast_path():
    kmoe.ensure_registered()
    assert {"reference", "grouped"} <= set(REGISTRY.impls("moe_ffn"))
    assert REGISTRY.choose("moe_ffn", "cpu", torch.float32).impl.name == "grouped"


def test_capacity_drops_latecomers_only():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    kept = kmoe.capacity_mask(idx, 4, capacity=2)
    assert kept.tolist() == [[0, 1], [0, 2], [-1, 1], [3, -1]]


def test_group_limited_routing_and_gate_scaling():
    cfg = ModelConfig(**{**CFG.__dict__, "n_group": 4, "topk_group": 1, "routed_scaling_factor": 2.5})
    gate = moe_layer(cfg).gate
    with torch.no_grad():
        gate.weight.normal_()
    scores, idx, gates = gate(torch.randn(50, 32))
    assert bool(((idx // 2)[:, 0] == (idx // 2)[:, 1]).all())  # 2 experts per group, one group per token
    assert torch.allclose(gates.sum(-1), torch.full((50,), 2.5))
    assert scores.dtype == torch.float32 and scores.min() >= 0


def test_v2_group_scoring_ranks_groups_by_their_best_expert():
    """DeepSeek-V2's group_limited_greedy: keep the topk_group groups holding the best single experts, then
    the plain top-k of the softmax scores inside them, gates not renormalised."""
    cfg = ModelConfig(**{**CFG.__dict__, "n_group": 4, "topk_group": 2, "group_scoring": "max",
                         "scoring_func": "softmax", "norm_topk_prob": False, "moe_balance": "none"})
    torch.manual_seed(0)
    gate = moe_layer(cfg).gate
    with torch.no_grad():
        gate.weight.normal_()
    x = torch.randn(200, 32)
    scores, idx, gates = gate(x)
    best_groups = scores.view(200, 4, 2).amax(-1).topk(2, dim=-1).indices  # (N, 2)
    kept = scores.view(200, 4, 2) * torch.zeros(200, 4, 1).scatter_(1, best_groups[..., None], 1.0)
    want = kept.view(200, 8).topk(2, dim=-1)
    assert torch.equal(idx.sort(-1).values, want.indices.sort(-1).values)
    torch.testing.assert_close(gates.sort(-1).values, want.values.sort(-1).values)
    # a top-2-sum ranking differs for some tokens: the two scorings are not the same rule
    top2 = ModelConfig(**{**cfg.__dict__, "group_scoring": "top2_sum"})
    other = moe_layer(top2).gate
    other.load_state_dict(gate.state_dict())
    assert not torch.equal(other(x)[1].sort(-1).values, idx.sort(-1).values)


def test_bias_balancing_evens_out_a_skewed_router_and_only_in_training():
    cfg = ModelConfig(**{**CFG.__dict__, "moe_bias_update_rate": 0.05})
    layer = moe_layer(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=gen)
    x[:, 0] = 2.0
    with torch.no_grad():
        layer.gate.weight.copy_(0.3 * torch.randn(8, 32, generator=gen))
        layer.gate.weight[:2, 0] += 2.0  # experts 0 and 1 win almost every token
    layer.eval()
    layer(x)
    assert torch.count_nonzero(layer.gate.e_score_correction_bias) == 0
    layer.train()
    with torch.no_grad():
        layer(x)
        first = layer.stats["load"].clone()
        for _ in range(60):
            layer(x)
    last = layer.stats["load"]
    assert first.max() / first.mean() > 3.5 and last.max() / last.mean() < 1.5
    assert layer.gate.e_score_correction_bias[:2].max() < 0  # the favourites were pushed down


def test_aux_loss_sends_gradient_to_the_router():
    for balance, expect in (("aux_loss", True), ("none", False)):
        layer = moe_layer(ModelConfig(**{**CFG.__dict__, "moe_balance": balance})).train()
        (layer(torch.randn(2, 10, 32)) * 0).sum().backward()
        assert (layer.gate.weight.grad.abs().sum() > 0) == expect, balance
        assert ("aux_loss" in layer.stats) == expect


def test_moe_stats_and_active_parameter_count():
    m = Transformer(CFG).train()
    assert m.moe_stats() == {}
    m(torch.randint(0, 64, (2, 16)))
    stats = m.moe_stats()
    assert stats["moe_load_max"] >= 1.0 >= stats["moe_load_min"] and stats["moe_dropped"] == 0
    total = sum(p.numel() for p in m.parameters()) - (CFG.vocab_size * CFG.hidden_size)  # tied lm_head counted once
    assert CFG.num_params(include_embedding=False) == total
    assert CFG.num_params(active=True) < CFG.num_params()


def test_invalid_moe_config_names_the_field():
    with pytest.raises(ValueError, match="model.n_group"):
        ModelConfig(n_routed_experts=6, n_group=4)
    with pytest.raises(ValueError, match="model.num_experts_per_tok"):
        ModelConfig(n_routed_experts=4, num_experts_per_tok=5)
    with pytest.raises(ValueError, match="model.moe_balance"):
        ModelConfig(n_routed_experts=4, moe_balance="magic")


MOE_MLA = ["model.n_routed_experts=4", "model.n_shared_experts=1", "model.num_experts_per_tok=2",
           "model.first_k_dense_replace=1", "model.kv_lora_rank=16", "model.q_lora_rank=16",
           "model.qk_rope_head_dim=4", "model.moe_bias_update_rate=0.01"]


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_moe_mla_pretrains_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    full = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "full", steps=12) + MOE_MLA)
    pretrain(full)
    curve = [loss for _, loss in losses(tmp_path / "full")]
    assert curve[-1] < 0.8 * curve[0]
    ckpt = latest_checkpoint(tmp_path / "full")
    hf = json.loads((ckpt / "config.json").read_text())
    assert hf["model_type"] == "deepseek_v3" and hf["n_routed_experts"] == 4
    bias = load_checkpoint(ckpt).model.model.layers[1].mlp.gate.e_score_correction_bias
    assert torch.count_nonzero(bias) > 0  # balancing ran and the bias was saved
    logged = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert all(r["moe_load_max"] >= 1.0 >= r["moe_load_min"] for r in logged)  # expert load is logged

    from diji.train import pretrain as pretrain_mod

    original = pretrain_mod.PretrainStage.next_batch

    def crash_after_ten(self):
        if self.batches.cursor == 10:
            raise RuntimeError("simulated crash")
        return original(self)

    part = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "part", steps=12) + MOE_MLA)
    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", crash_after_ten)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(part)
    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", original)
    pretrain(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_moe_with_aux_loss_and_capacity_trains_as_a_diji_native_checkpoint(data_dir, tmp_path):
    extra = ["model.n_routed_experts=4", "model.num_experts_per_tok=1", "model.moe_balance=\"aux_loss\"",
             "model.moe_aux_loss_coef=0.01", "model.moe_capacity_factor=1.25", "model.scoring_func=\"softmax\""]
    result = pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=8) + extra))
    hf = json.loads((latest_checkpoint(tmp_path / "t") / "config.json").read_text())
    assert hf["model_type"] == "diji" and "no_hf_equivalent" in hf["diji"]
    loaded = load_checkpoint(result["checkpoint"]).model
    assert loaded.config.moe_balance == "aux_loss" and loaded.config.moe_capacity_factor == 1.25


def test_moe_ffn_passes_conformance_cases(monkeypatch):
    from diji.compute.conformance import check_op
    from diji.kernels import specs

    kmoe.ensure_registered()
    monkeypatch.setitem(specs.SPECS, "moe_ffn", kmoe.conformance_cases)
    for dtype in ("float32", "bfloat16"):
        rows = check_op("moe_ffn", torch.device("cpu"), dtype, timing=False)
        assert {r.impl for r in rows} == {"reference", "grouped"}
        assert all(r.passed for r in rows), [(r.impl, r.case, r.max_rel, r.error) for r in rows if not r.passed]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_moe_mla_model_passes_the_golden_trajectory(dtype):
    from diji.compute.conformance import golden_trajectory

    cfg = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64, n_routed_experts=4,
                      n_shared_experts=1, kv_lora_rank=32, q_lora_rank=32)

    def make():
        torch.manual_seed(0)
        m = Transformer(cfg)
        m.init_weights(seed=0)
        return m

    result = golden_trajectory(make, torch.device("cpu"), dtype, steps=6)
    assert result.passed, result

"""Parity with the real `transformers` models: tiny configs, random weights, no download.

Reference pinned: transformers 5.23.0 (torch 2.13.0, CPU, fp32) — the version these figures were
measured with; `pip install "transformers==5.23.0"` reproduces them. For every family diji claims:
logits agree to ≤ 1e-4, greedy generations (one prompt and a left-padded ragged batch) are identical,
and import → generate → export → AutoModelForCausalLM.from_pretrained → generate gives the same tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from diji.data.chat import CHAT_TEMPLATE
from diji.data.tokenizer import train_tokenizer
from diji.kernels import rope
from diji.kernels.rope import RopeScaling
from diji.model.commands import export_hf, import_hf
from diji.model.generate import SamplingParams, generate
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import load_checkpoint, save_checkpoint
from testkit import synthetic_docs

transformers = pytest.importorskip("transformers", minversion="5.0")

V = 300
TOL = 1e-4
NEW = 10


def hf_config(family: str):
    common = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    rope = {"rope_type": "default", "rope_theta": 5000.0}
    if family == "llama":
        return transformers.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96, rope_parameters=rope)
    if family == "llama_tied_headdim":
        return transformers.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96, head_dim=24,
                                        tie_word_embeddings=True, rope_parameters=rope)
    if family == "mistral":
        return transformers.MistralConfig(**common, num_key_value_heads=1, intermediate_size=80, sliding_window=None,
                                          rope_parameters=rope)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, num_key_value_heads=2, intermediate_size=96, rope_parameters=rope)
    if family == "deepseek_v3":  # MoE + MLA, compressed queries, group-limited routing, a dense first layer
        return transformers.DeepseekV3Config(
            **common, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_shared_experts=1,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
            routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
            v_head_dim=12, rope_parameters=rope)
    if family == "deepseek_v3_mla_only":  # MLA with a full-rank q_proj, dense layers only
        return transformers.DeepseekV3Config(
            **common, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_routed_experts=4,
            num_experts_per_tok=1, n_group=1, topk_group=1, first_k_dense_replace=2, kv_lora_rank=12,
            q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, rope_parameters=rope)
    # ---- long-context RoPE: original contexts shorter than the test sequences, so every regime is exercised
    if family == "llama3_rope":  # Llama 3.1+: long wavelengths interpolated, short kept, a ramp between
        return transformers.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96, rope_parameters={
            "rope_type": "llama3", "rope_theta": 5000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if family == "llama_linear_rope":
        return transformers.LlamaConfig(**common, num_key_value_heads=2, intermediate_size=96,
                                        rope_parameters={"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.5})
    if family == "qwen2_yarn":  # Qwen2.5 long-context recipe: yarn on dense attention (attention_factor on cos/sin)
        return transformers.Qwen2Config(**common, num_key_value_heads=2, intermediate_size=96, rope_parameters={
            "rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0, "original_max_position_embeddings": 16})
    if family == "qwen3":  # q/k RMSNorm per head, explicit head_dim (≠ hidden / heads)
        return transformers.Qwen3Config(**common, num_key_value_heads=2, intermediate_size=96, head_dim=24,
                                        rope_parameters=rope)
    if family == "qwen3_moe":  # softmax top-2 of 8 experts, renormalised, a dense first layer
        return transformers.Qwen3MoeConfig(**common, num_key_value_heads=2, intermediate_size=96, head_dim=16,
                                           num_experts=8, num_experts_per_tok=2, moe_intermediate_size=24,
                                           norm_topk_prob=True, mlp_only_layers=[0], rope_parameters=rope)
    if family == "deepseek_v2":  # softmax router, group-limited greedy, shared expert; YaRN with mscale (V2's recipe)
        return transformers.DeepseekV2Config(
            **common, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_shared_experts=1,
            n_routed_experts=8, num_experts_per_tok=2, topk_method="group_limited_greedy", n_group=4, topk_group=2,
            first_k_dense_replace=1, routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
            qk_nope_head_dim=16, v_head_dim=12, rope_parameters={
                "rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})
    if family == "deepseek_v2_lite":  # V2-Lite's shape: greedy top-k, full-rank q_proj, plain RoPE
        return transformers.DeepseekV2Config(
            **common, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_shared_experts=2,
            n_routed_experts=6, num_experts_per_tok=2, topk_method="greedy", first_k_dense_replace=1,
            kv_lora_rank=12, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8,
            rope_parameters=rope)
    if family == "deepseek_v3_yarn":  # V3's released rope: yarn, mscale = mscale_all_dim (softmax scale × mscale²)
        return transformers.DeepseekV3Config(
            **common, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_shared_experts=1,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
            routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
            v_head_dim=12, rope_parameters={
                "rope_type": "yarn", "rope_theta": 5000.0, "factor": 40.0, "original_max_position_embeddings": 16,
                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    raise KeyError(family)


FAMILIES = ("llama", "llama_tied_headdim", "mistral", "qwen2", "deepseek_v3", "deepseek_v3_mla_only",
            "llama3_rope", "llama_linear_rope", "qwen2_yarn", "qwen3", "qwen3_moe", "deepseek_v2",
            "deepseek_v2_lite", "deepseek_v3_yarn")


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits are well separated (greedy decoding is then a sharp test), and
    non-trivial norms, biases and routing biases so that every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.05 * torch.randn(b.shape, generator=gen))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A diji tokenizer saved the way transformers saves one, with the chat template."""
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(iter(synthetic_docs(200)), V, d, show_progress=False)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"), bos_token="<|bos|>", eos_token="<|endoftext|>",
        pad_token="<|pad|>")
    fast.chat_template = CHAT_TEMPLATE
    out = d / "hf"
    fast.save_pretrained(out)
    return out


def write_hf_dir(family: str, root, tokenizer_dir, **save_kw):
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(hf_config(family)).eval()
    randomise(hf_model, seed=len(family))
    d = root / f"hf-{family}"
    hf_model.save_pretrained(d, **save_kw)
    for f in tokenizer_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return hf_model, d


def hf_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    # No stop tokens on either side: compare NEW greedy steps even if a random model emits EOS.
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[:, P:].tolist()


def diji_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    return [g.tokens for g in generate(model, prompts, SamplingParams(max_new_tokens=NEW), pad_id=0)]


PROMPTS = [[5, 17, 42, 99, 7, 250, 3, 11], [8, 120, 64]]


@pytest.mark.parametrize("family", FAMILIES)
def test_import_matches_transformers_logits_and_greedy_tokens(family, tmp_path, tokenizer_dir):
    hf_model, d = write_hf_dir(family, tmp_path, tokenizer_dir)
    ours = load_checkpoint(import_hf(d, tmp_path / "ckpt")).model.eval()
    x = torch.randint(3, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf_model(x).logits - ours(x)).abs().max().item()
    assert diff <= TOL, f"{family}: max |Δlogit| = {diff:.2e}"
    for prompts in (PROMPTS[:1], PROMPTS):  # one prompt, and a left-padded ragged batch
        assert diji_greedy(ours, prompts) == hf_greedy(hf_model, prompts)


@pytest.mark.parametrize("family", FAMILIES)
def test_import_generate_export_load_in_transformers_same_tokens(family, tmp_path, tokenizer_dir):
    _, d = write_hf_dir(family, tmp_path, tokenizer_dir)
    ckpt = import_hf(d, tmp_path / "ckpt")
    ours = load_checkpoint(ckpt).model.eval()
    tokens = diji_greedy(ours, PROMPTS)
    out = export_hf(ckpt, tmp_path / "exported")
    assert not (out / "train_state.pt").exists() and (out / "tokenizer.json").is_file()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_greedy(back, PROMPTS) == tokens
    x = torch.randint(3, V, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (back(x).logits - ours(x)).abs().max().item() <= TOL
    # The tokenizer and its chat template travel with the weights.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "the model"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>assistant" in text


def test_sharded_checkpoint_imports(tmp_path, tokenizer_dir):
    hf_model, d = write_hf_dir("deepseek_v3", tmp_path, tokenizer_dir, max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").is_file()
    ours = load_checkpoint(import_hf(d, tmp_path / "ckpt")).model.eval()
    x = torch.randint(3, V, (1, 12))
    with torch.no_grad():
        assert (hf_model(x).logits - ours(x)).abs().max().item() <= TOL


TINY = dict(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=64)
YARN = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=16, mscale=0.8, mscale_all_dim=0.6)
DIJI_NATIVE = {  # name: (the model_type it must be written as, a diji config)
    "llama": ("llama", ModelConfig(**TINY)),
    "qwen2": ("qwen2", ModelConfig(**TINY, attention_bias=True, tie_word_embeddings=False)),
    "deepseek_v3": ("deepseek_v3", ModelConfig(
        **{**TINY, "num_hidden_layers": 3, "intermediate_size": 96}, kv_lora_rank=16, q_lora_rank=20,
        qk_rope_head_dim=8, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
        n_group=4, topk_group=2, routed_scaling_factor=1.5)),
    "llama3_rope": ("llama", ModelConfig(**TINY, rope_scaling=RopeScaling(
        "llama3", factor=8.0, original_max_position_embeddings=16, low_freq_factor=1.0, high_freq_factor=4.0))),
    "qwen2_yarn": ("qwen2", ModelConfig(**TINY, attention_bias=True, rope_scaling=YARN)),
    "qwen3": ("qwen3", ModelConfig(**TINY, qk_norm=True, head_dim=16, tie_word_embeddings=False)),
    "qwen3_moe": ("qwen3_moe", ModelConfig(
        **TINY, qk_norm=True, n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
        first_k_dense_replace=1, scoring_func="softmax", moe_balance="aux_loss", tie_word_embeddings=False)),
    "deepseek_v2": ("deepseek_v2", ModelConfig(
        **{**TINY, "num_hidden_layers": 3}, kv_lora_rank=16, q_lora_rank=0, qk_rope_head_dim=8, n_routed_experts=8,
        n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1, n_group=4, topk_group=2,
        group_scoring="max", scoring_func="softmax", norm_topk_prob=False, moe_balance="aux_loss",
        routed_scaling_factor=1.5, rope_scaling=YARN)),
    "deepseek_v3_yarn": ("deepseek_v3", ModelConfig(
        **TINY, kv_lora_rank=12, q_lora_rank=20, qk_rope_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
        rope_scaling=YARN)),
}


@pytest.mark.parametrize("name", DIJI_NATIVE)
def test_diji_checkpoint_loads_in_transformers_with_equal_logits(name, tmp_path, tokenizer_dir):
    model_type, cfg = DIJI_NATIVE[name]
    model = Transformer(cfg)
    randomise(model, seed=3)
    if model_type in ("qwen3_moe", "deepseek_v2"):  # families without a routing bias: diji's stays at zero
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.zero_()
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tokenizer_dir / "tokenizer.json", {"step": 0})
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == model_type
    read = load_checkpoint(ckpt).model.config  # diji reads back what it wrote (derived widths may be made explicit)
    fields = ("rope_scaling", "qk_norm", "scoring_func", "norm_topk_prob", "group_scoring", "moe_balance")
    assert [getattr(read, f) for f in fields] == [getattr(cfg, f) for f in fields]
    back = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf")).eval()
    x = torch.randint(3, V, (2, 40))  # beyond the scaled configs' original 16-token context
    with torch.no_grad():
        assert (back(x).logits - model.eval()(x)).abs().max().item() <= TOL
    assert hf_greedy(back, PROMPTS) == diji_greedy(model, PROMPTS)


# The rope and routing fields of released config.json files (4.x spelling: rope_scaling + rope_theta), with the
# sizes shrunk: what matters is how each field is read, and that export writes it back the same way.
SHRUNK = dict(vocab_size=V, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96)
RELEASED = {
    "Llama-3.1-8B": ({"model_type": "llama", **SHRUNK, "num_key_value_heads": 2, "max_position_embeddings": 131072,
                      "rope_theta": 500000.0, "rope_scaling": {
                          "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
                     RopeScaling("llama3", 8.0, 8192, 1.0, 4.0)),
    "Qwen2.5-7B-Instruct (long context)": (
        {"model_type": "qwen2", **SHRUNK, "num_key_value_heads": 2, "max_position_embeddings": 32768,
         "rope_theta": 1000000.0, "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768,
                                                   "type": "yarn"}},
        RopeScaling("yarn", 4.0, 32768)),
    "DeepSeek-V2-Lite": ({"model_type": "deepseek_v2", **SHRUNK, "num_key_value_heads": 4,
                          "max_position_embeddings": 163840, "rope_theta": 10000, "kv_lora_rank": 16,
                          "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
                          "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 2,
                          "moe_intermediate_size": 16, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
                          "topk_method": "greedy", "norm_topk_prob": False, "routed_scaling_factor": 1.0,
                          "aux_loss_alpha": 0.001, "rope_scaling": {
                              "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                              "original_max_position_embeddings": 4096, "type": "yarn"}},
                         RopeScaling("yarn", 40.0, 4096, mscale=0.707, mscale_all_dim=0.707)),
    "DeepSeek-V3 (bf16)": ({"model_type": "deepseek_v3", **SHRUNK, "num_key_value_heads": 4,
                            "max_position_embeddings": 163840, "rope_theta": 10000, "kv_lora_rank": 16,
                            "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
                            "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
                            "moe_intermediate_size": 16, "first_k_dense_replace": 3, "n_group": 4, "topk_group": 2,
                            "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
                            "routed_scaling_factor": 2.5, "num_nextn_predict_layers": 1, "rope_scaling": {
                                "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                                "original_max_position_embeddings": 4096, "type": "yarn"}},
                           RopeScaling("yarn", 40.0, 4096, mscale=1.0, mscale_all_dim=1.0)),
    "Qwen3-30B-A3B": ({"model_type": "qwen3_moe", **SHRUNK, "num_key_value_heads": 2, "head_dim": 32,
                       "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rope_scaling": None,
                       "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                       "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
                       "router_aux_loss_coef": 0.001, "attention_bias": False}, RopeScaling()),
}


@pytest.mark.parametrize("name", RELEASED)
def test_released_config_fields_are_read_and_written_back(name):
    from diji.model.hf import from_hf_config, to_hf_config

    hf, scaling = RELEASED[name]
    cfg = from_hf_config(hf)
    assert cfg.rope_scaling == scaling and cfg.rope_theta == hf["rope_theta"]
    out = to_hf_config(cfg, 1, 2, 0)
    assert out["model_type"] == hf["model_type"]
    assert from_hf_config(out) == cfg
    # transformers computes the same frequencies and attention factor from diji's export as from the release
    if scaling.rope_type != "default":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        init = ROPE_INIT_FUNCTIONS[scaling.rope_type]
        ours = init(transformers.AutoConfig.for_model(**{k: v for k, v in out.items() if k != "diji"}), "cpu")
        theirs = init(transformers.AutoConfig.for_model(**hf), "cpu")
        assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1]
        torch.testing.assert_close(rope.inv_freq(cfg.rope_head_dim, cfg.rope_theta, cfg.rope_scaling), theirs[0],
                                   rtol=1e-6, atol=0)
        assert rope.attention_factor(cfg.rope_scaling) == pytest.approx(theirs[1], rel=1e-12)


def test_refused_configs_say_what_is_unsupported(tmp_path, tokenizer_dir):
    from diji.model.hf import from_hf_config

    base = {"model_type": "qwen3_moe", **SHRUNK, "num_key_value_heads": 2, "max_position_embeddings": 64,
            "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16}
    bad = [
        ({**base, "decoder_sparse_step": 2}, "decoder_sparse_step"),
        ({**base, "mlp_only_layers": [2]}, "mlp_only_layers"),
        ({**base, "attention_bias": True}, "attention_bias"),
        ({**base, "rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "rope type 'longrope'"),
        ({**base, "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({**RELEASED["DeepSeek-V2-Lite"][0], "topk_method": "noaux_tc"}, "topk_method"),
    ]
    for hf, match in bad:
        with pytest.raises(ValueError, match=match):
            from_hf_config(hf)


@pytest.mark.parametrize("family", ("llama3_rope", "qwen2_yarn", "qwen3", "qwen3_moe", "deepseek_v2",
                                    "deepseek_v3_yarn"))
def test_two_training_steps_then_export_still_equals_transformers(family, tmp_path, tokenizer_dir):
    """Gradients flow through the new parts (q/k norms, scaled rope tables, softmax routers, MLA's softmax
    correction) and a fine-tuned model still exports to what transformers computes."""
    _, d = write_hf_dir(family, tmp_path, tokenizer_dir)
    model = load_checkpoint(import_hf(d, tmp_path / "ckpt")).model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, V, (2, 33), generator=torch.Generator().manual_seed(4))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name in ("q_norm.weight", "k_norm.weight", "mlp.gate.weight", "kv_b_proj.weight"):
        changed = [n for n, p in model.named_parameters() if n.endswith(name) and not torch.equal(p, before[n])]
        assert changed or not any(n.endswith(name) for n in before), name
    ckpt = save_checkpoint(tmp_path / "tuned", model.eval(), d / "tokenizer.json", {"step": 2})
    back = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf")).eval()
    with torch.no_grad():
        assert (back(x).logits - model(x)).abs().max().item() <= TOL

"""Weight-only int8: the kernel's fast path equals its reference, the model stays close to float, and
`diji quantize` writes a verified checkpoint that loads back to the same model."""

from __future__ import annotations

import json

import pytest
import torch

from diji.cli import main
from diji.deploy_commands import export_gguf, quantize_checkpoint
from diji.errors import DijiError
from diji.kernels.quant import int8_linear_int8mm, int8_linear_reference, quantize_rows
from diji.kernels.registry import REGISTRY
from diji.model.generate import SamplingParams, generate
from diji.model.quantize import quantize_model, weight_bytes
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import load_quantized, save_checkpoint

CFG = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64)


def tiny(tie=True, bias=False) -> Transformer:
    m = Transformer(ModelConfig(**{**CFG.__dict__, "tie_word_embeddings": tie, "attention_bias": bias}))
    m.init_weights(seed=1)
    return m.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_fast_path_equals_reference(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    q, s = quantize_rows(w)
    x, b = torch.randn(2, 5, 32, generator=g).to(dtype), torch.randn(48, generator=g).to(dtype)
    ref, fast = int8_linear_reference(x, q, s, b), int8_linear_int8mm(x, q, s, b)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert fast.shape == (2, 5, 48) and torch.allclose(fast.float(), ref.float(), rtol=tol, atol=tol * 10)
    assert (q.float() * s[:, None] - w).abs().max() <= s.max() / 2 + 1e-6  # round to nearest


@pytest.mark.parametrize("tie", [True, False])
def test_quantized_model_is_close_to_float_and_a_quarter_of_the_bytes(tie):
    m, q = tiny(tie), tiny(tie)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = m(ids)
        quantize_model(q)
        for impl in ("reference", "int8mm"):
            with REGISTRY.forced({"int8_linear": impl}):
                got = q(ids)
            cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
            assert cos > 0.999, (impl, cos)
    assert weight_bytes(q) < 0.3 * weight_bytes(m)
    out = generate(q, [[5, 6, 7]], SamplingParams(max_new_tokens=5))  # int8 decodes through the forward
    assert len(out[0].tokens) == 5


def test_quantize_command_writes_a_checkpoint_that_loads_back(tmp_path, data_dir, capsys):
    m = tiny(tie=False, bias=True)
    ckpt = save_checkpoint(tmp_path / "fp", m, data_dir / "tokenizer.json", {"stage": "test"})
    assert main(["quantize", str(ckpt), "--out", str(tmp_path / "q8")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ratio"] < 0.35
    cfg = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert cfg["diji"]["quantization"]["method"] == "int8_weight_only"
    loaded = load_quantized(tmp_path / "q8")
    ref = quantize_model(tiny(tie=False, bias=True))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), ref(ids))
    assert loaded.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.int8
    assert loaded.lineage["stage"] == "quantize"
    with pytest.raises(DijiError, match="already quantised"):
        quantize_checkpoint(tmp_path / "q8", tmp_path / "again")
    with pytest.raises(DijiError, match="int8 diji checkpoint"):
        export_gguf(tmp_path / "q8", tmp_path / "x.gguf")
    # The commands users run take the int8 checkpoint as it is (load_checkpoint hands it to load_quantized)…
    assert main(["generate", str(tmp_path / "q8"), "--prompt", "the", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the")
    # …and export-hf, whose readers have no int8 layout, refuses it in one line.
    assert main(["export-hf", str(tmp_path / "q8"), "--out", str(tmp_path / "hf")]) == 2
    assert "int8" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    (tmp_path / "q8" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(DijiError):
        load_quantized(tmp_path / "q8")


def test_tied_checkpoint_round_trips_in_bfloat16(tmp_path, data_dir):
    ckpt = save_checkpoint(tmp_path / "fp", tiny(), data_dir / "tokenizer.json", {"stage": "test"})
    quantize_checkpoint(ckpt, tmp_path / "q8")
    loaded = load_quantized(tmp_path / "q8", dtype=torch.bfloat16)
    m = loaded.model
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert m.model.norm.weight.dtype == torch.bfloat16
    assert len(generate(m, [[5, 6, 7]], SamplingParams(max_new_tokens=4))[0].tokens) == 4

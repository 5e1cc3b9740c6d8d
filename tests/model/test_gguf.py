"""`diji export-gguf`: read back with gguf's own GGUFReader (fast), and run in llama.cpp's runtime
(slow, external: llama-cpp-python built from the registry's source) with the same greedy tokens as diji."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diji.cli import main
from diji.data.tokenizer import Tokenizer
from diji.errors import DijiError
from diji.model.generate import SamplingParams, generate
from diji.model.gguf import permute_rope_rows
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import save_checkpoint

gguf = pytest.importorskip("gguf")


def tiny(bias: bool = False, tie: bool = True, seed: int = 1) -> Transformer:
    cfg = ModelConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                      attention_bias=bias, tie_word_embeddings=tie)
    m = Transformer(cfg)
    m.init_weights(seed=seed)
    with torch.no_grad():  # decisive logits, so f16 rounding cannot flip a greedy choice between runtimes
        m.lm_head.weight.mul_(8.0)
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    return m.eval()


def export(tmp_path, data_dir, capsys, model, qtype="f16"):
    ckpt = save_checkpoint(tmp_path / "ckpt", model, data_dir / "tokenizer.json", {"stage": "test"})
    out = tmp_path / f"m-{qtype}.gguf"
    assert main(["export-gguf", str(ckpt), "--out", str(out), "--type", qtype]) == 0
    return ckpt, out, json.loads(capsys.readouterr().out)


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


@pytest.mark.parametrize("bias,tie,qtype", [(False, True, "f16"), (True, False, "q8_0")])
def test_gguf_reader_sees_hyperparameters_tokenizer_template_and_weights(tmp_path, data_dir, capsys,
                                                                         bias, tie, qtype):
    m = tiny(bias, tie)
    ckpt, out, summary = export(tmp_path, data_dir, capsys, m, qtype)
    arch = "qwen2" if bias else "llama"
    assert summary["architecture"] == arch and summary["pre_tokenizer"] == "gpt-2"
    r = gguf.GGUFReader(out)
    assert field(r, "general.architecture") == arch
    assert field(r, f"{arch}.block_count") == 2 and field(r, f"{arch}.embedding_length") == 64
    assert field(r, f"{arch}.attention.head_count_kv") == 2 and field(r, f"{arch}.context_length") == 128
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == 300 and all(tokens[i] == tok.id_to_token(i) for i in range(tok.vocab_size))
    types = field(r, "tokenizer.ggml.token_type")
    assert types[tok.eos_id] == 3 and types[100] == 1  # CONTROL for specials, NORMAL for the rest
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    assert field(r, "tokenizer.ggml.merges")[:5] == [" ".join(x) if isinstance(x, list) else x
                                                     for x in spec["model"]["merges"][:5]]
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id
    assert field(r, "tokenizer.chat_template") == tok.chat_template
    tensors = {t.name: t for t in r.tensors}
    assert ("output.weight" in tensors) == (not tie) and ("blk.0.attn_q.bias" in tensors) == bias
    sd = m.state_dict()
    for name, src, heads in (("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2),
                             ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", 0)):
        t = tensors[name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(sd[src].shape)
        want = sd[src] if not heads or arch == "qwen2" else permute_rope_rows(sd[src], heads)
        assert np.allclose(got, want.numpy(), atol=2e-3 if qtype == "q8_0" else 1e-3), name
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_export_gguf_refuses_what_llama_cpp_cannot_run(tmp_path, data_dir, capsys):
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32, qk_norm=True)
    ckpt = save_checkpoint(tmp_path / "q3", Transformer(cfg), data_dir / "tokenizer.json", {"stage": "test"})
    assert main(["export-gguf", str(ckpt), "--out", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export-gguf covers dense Llama/Qwen2" in err
    assert not (tmp_path / "x.gguf").exists()
    from diji.deploy_commands import export_gguf

    with pytest.raises(DijiError, match="--type"):
        export_gguf(ckpt, tmp_path / "x.gguf", "q4_0")


PROMPTS = ["the model reads", "data flows through filters", "模型 读取 数据", "training resumes after",
           "a crash . the next one"]


@pytest.mark.slow
@pytest.mark.external
@pytest.mark.parametrize("bias", [False, True])
def test_llama_cpp_generates_the_same_greedy_tokens_as_diji(tmp_path, data_dir, capsys, bias):
    llama_cpp = pytest.importorskip("llama_cpp")
    m = tiny(bias=bias, tie=not bias)
    ckpt, out, _ = export(tmp_path, data_dir, capsys, m, "f16")
    tok = Tokenizer.from_file(ckpt / "tokenizer.json")
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, n_threads=1, verbose=False, logits_all=False)
    for text in PROMPTS:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text  # same pre-tokenizer
        want = generate(m, [ids], SamplingParams(max_new_tokens=32))[0].tokens
        llm.reset()
        got = []
        for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            got.append(int(t))
            if len(got) == 32:
                break
        assert got == want, (text, got, want)

"""`diji import-hf` / `diji export-hf` on the command line: success, and one clear line on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from diji.cli import main
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import load_checkpoint, save_checkpoint

transformers = pytest.importorskip("transformers", minversion="5.0")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def llama_dir(tmp_path, data_dir):
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32)
    d = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    (d / "tokenizer.json").write_bytes((data_dir / "tokenizer.json").read_bytes())
    return d


def test_import_then_export_on_the_command_line(llama_dir, tmp_path, capsys):
    code, out, err = run(capsys, "import-hf", str(llama_dir), "--out", str(tmp_path / "ckpt"))
    assert code == 0, err
    ckpt = json.loads(out)["checkpoint"]
    lineage = json.loads((tmp_path / "ckpt" / "lineage.json").read_text())
    assert lineage["stage"] == "import-hf" and lineage["source_model_type"] == "llama"
    assert load_checkpoint(ckpt).model.config.num_hidden_layers == 1
    code, out, err = run(capsys, "export-hf", ckpt, "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert not (tmp_path / "hf" / "lineage.json").exists()


def one_line_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("diji: error: "), err
    return err


def test_bad_inputs_are_one_clear_line(llama_dir, tmp_path, capsys, data_dir):
    assert "not a directory" in one_line_error(capsys, "import-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    (llama_dir / "tokenizer.json").unlink()
    assert "tokenizer.json" in one_line_error(capsys, "import-hf", str(llama_dir), "--out", str(tmp_path / "o"))
    (llama_dir / "tokenizer.json").write_bytes((data_dir / "tokenizer.json").read_bytes())
    hf = json.loads((llama_dir / "config.json").read_text())
    scaled = {**hf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}
    (llama_dir / "config.json").write_text(json.dumps(scaled))
    assert "rope type 'llama3'" in one_line_error(capsys, "import-hf", str(llama_dir), "--out", str(tmp_path / "o"))
    (llama_dir / "config.json").write_text(json.dumps({**hf, "model_type": "gpt2"}))
    assert "unsupported model_type 'gpt2'" in one_line_error(capsys, "import-hf", str(llama_dir), "--out",
                                                             str(tmp_path / "o"))
    (llama_dir / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 2}))
    assert "do not fit" in one_line_error(capsys, "import-hf", str(llama_dir), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_export_refuses_a_model_transformers_cannot_run(tmp_path, capsys, data_dir):
    cfg = ModelConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, n_routed_experts=4)
    model = Transformer(cfg).eval()
    ckpt = save_checkpoint(tmp_path / "moe", model, data_dir / "tokenizer.json", {"step": 0})
    x = torch.randint(0, 300, (1, 8))
    with torch.no_grad():  # diji itself reads its native checkpoint back exactly
        assert torch.equal(load_checkpoint(ckpt).model.eval()(x), model(x))
    err = one_line_error(capsys, "export-hf", str(ckpt), "--out", str(tmp_path / "hf"))
    assert "no transformers equivalent" in err and "kv_lora_rank" in err


def test_mistral_sliding_window_shorter_than_the_context_shortens_the_context():
    from diji.model.hf import from_hf_config

    hf = transformers.MistralConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                    sliding_window=16).to_dict()
    assert from_hf_config(hf).max_position_embeddings == 16
    assert from_hf_config({**hf, "sliding_window": None}).max_position_embeddings == 64

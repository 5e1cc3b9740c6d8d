"""LoRA: starts equal to the base, trains only adapters, and merges to a plain model with equal outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sft import TINY, sft_overrides, tiny_base, write_records

from diji.config import load_config
from diji.errors import DijiError
from diji.model.transformer import ModelConfig, Transformer
from diji.train.checkpoint import load_checkpoint, read_lineage
from diji.train.lora import LoRAConfig, LoRALinear, apply_lora, load_model, merge_lora, trainable_parameters
from diji.train.sft import SFTConfig, sft

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_adapted_model_starts_equal_and_trains_only_adapters():
    base = Transformer(ModelConfig(**TINY))
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        want = base(x)
    names = apply_lora(base, LoRAConfig(rank=4, alpha=8, target_modules=ALL))
    assert len(names) == 7 * TINY["num_hidden_layers"]
    with torch.no_grad():
        assert torch.equal(base(x), want)  # B = 0 at init
    trainable, total = trainable_parameters(base)
    assert 0 < trainable < total / 5
    assert all(("lora_" in n) == p.requires_grad for n, p in base.named_parameters())


def test_merged_equals_unmerged_outputs():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**TINY)).eval()
    apply_lora(model, LoRAConfig(rank=4, alpha=16, dropout=0.1, target_modules=ALL))
    with torch.no_grad():  # give the adapters a sizeable non-zero update
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.05)
    x = torch.randint(0, 300, (3, 16))
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(model)(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(adapted, merged, atol=1e-5, rtol=0)
    assert (adapted - Transformer(ModelConfig(**TINY))(x)).abs().max() > 1e-3  # the update was not a no-op


def test_lora_sft_then_merge_command_gives_a_plain_checkpoint_with_equal_outputs(data_dir, tmp_path):
    base = tiny_base(tmp_path, data_dir)
    data = write_records(tmp_path / "chat.jsonl")
    over = sft_overrides(base, data, tmp_path, "lora", steps=6) + ["lora.rank=4", "lora.alpha=8", "optim.lr=3e-2"]
    result = sft(load_config(SFTConfig, None, over))
    adapter = Path(result["checkpoint"])
    assert read_lineage(adapter)["lora"]["rank"] == 4
    # PEFT layout: the base weights in model.safetensors, the adapters beside them under PEFT's names.
    from safetensors.torch import load_file

    peft_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["r"] == 4 and peft_cfg["base_model_name_or_path"] == str(Path(base).resolve())
    names = list(load_file(str(adapter / "adapter_model.safetensors")))
    assert names and all(n.startswith("base_model.model.model.layers.") and n.endswith((".lora_A.weight", ".lora_B.weight"))
                         for n in names)
    assert not any("lora" in n for n in load_file(str(adapter / "model.safetensors")))
    adapted = load_model(adapter).model.eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():  # load_checkpoint (generate, eval, serve) merges the adapters on load
        assert torch.allclose(load_checkpoint(adapter).model.eval()(x), adapted(x), atol=1e-5, rtol=0)
    bare = Transformer(ModelConfig(**TINY))
    from diji.train.checkpoint import load_weights

    with pytest.raises(DijiError, match="lora merge"):  # a plain model cannot take an adapter checkpoint's weights
        load_weights(bare, adapter)
    out = tmp_path / "merged"
    done = subprocess.run([sys.executable, "-m", "diji", "lora", "merge", str(adapter), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checkpoint"] == str(out.resolve())
    merged = load_checkpoint(out).model.eval()
    plain = load_checkpoint(base).model.eval()
    with torch.no_grad():
        assert torch.allclose(merged(x), adapted(x), atol=1e-5, rtol=0)
        assert (merged(x) - plain(x)).abs().max() > 1e-4  # training changed something
    assert read_lineage(out)["stage"] == "lora-merge"
    bad = subprocess.run([sys.executable, "-m", "diji", "lora", "merge", str(base), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a LoRA adapter" in bad.stderr and "Traceback" not in bad.stderr


def test_config_validation():
    with pytest.raises(ValueError, match="lora.rank"):
        LoRAConfig(rank=-1)
    with pytest.raises(ValueError, match="lora.target_modules"):
        LoRAConfig(rank=2, target_modules=("embed_tokens",))
    with pytest.raises(ValueError, match="lora.dropout"):
        LoRAConfig(rank=2, dropout=1.0)

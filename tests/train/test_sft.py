"""SFT: assistant-only loss, loss falls, exact resume, clear errors; helpers shared by the LoRA/GRPO tests."""

import json
from pathlib import Path

import pytest

from diji.config import load_config
from diji.errors import DijiError
from diji.model.transformer import ModelConfig, Transformer
from diji.observe.metrics import read_metrics
from diji.train.checkpoint import latest_checkpoint, read_lineage, save_checkpoint
from diji.train.sft import SFTConfig, sft

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=256)


def tiny_base(root: Path, data_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny checkpoint with the test tokenizer: fine-tuning needs no pretraining."""
    model = Transformer(ModelConfig(**TINY))
    model.init_weights(seed=seed)
    return save_checkpoint(root / "base", model, data_dir / "tokenizer.json", {"stage": "init"})


def write_records(path: Path, n: int = 48) -> Path:
    """A trivially learnable chat set: echo the word back after a fixed phrase."""
    words = ["red", "blue", "green", "tea", "cat", "sun"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            w = words[i % len(words)]
            if i % 2:
                f.write(json.dumps({"prompt": f"say {w}", "response": f"<think>echo</think>{w} {w}"}) + "\n")
            else:
                msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"say {w}"},
                        {"role": "assistant", "content": f"<think>echo</think>{w} {w}"}]
                f.write(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n")
    return path


def sft_overrides(base: Path, data: Path, out: Path, name: str = "sft", steps: int = 20) -> list[str]:
    return [
        f"train.init_from={json.dumps(str(base))}", f"data.path={json.dumps(str(data))}", "data.seq_len=96",
        f"run.out_dir={json.dumps(str(out))}", f'run.name="{name}"', "run.progress=false",
        f"train.max_steps={steps}", "train.batch_size=8", "train.log_every=1", "train.eval_every=10",
        "train.eval_batches=1", "train.save_every=5", "optim.lr=1e-2", "optim.warmup_steps=2",
        "data.val_fraction=0.1",
    ]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_sft_loss_falls_and_lineage_points_to_parent(data_dir, tmp_path):
    base = tiny_base(tmp_path, data_dir)
    data = write_records(tmp_path / "chat.jsonl")
    result = sft(load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, steps=30)))
    curve = [loss for _, loss in losses(tmp_path / "sft")]
    assert curve[-1] < 0.3 * curve[0]
    lineage = read_lineage(result["checkpoint"])
    assert lineage["stage"] == "sft" and lineage["parent"] == str(base)
    assert lineage["parent_sha256"] == read_lineage(base)["weights_sha256"]
    assert result["val_loss"] < curve[0]


def test_sft_resume_after_a_crash_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    base = tiny_base(tmp_path, data_dir)
    data = write_records(tmp_path / "chat.jsonl")
    sft(load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "full", steps=12)))
    from diji.train import sft as sft_mod

    original = sft_mod.SFTStage.next_batch
    calls = {"n": 0}

    def crash_after_seven(self):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash")
        return original(self)

    part = load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "part", steps=12))
    monkeypatch.setattr(sft_mod.SFTStage, "next_batch", crash_after_seven)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sft(part)
    monkeypatch.setattr(sft_mod.SFTStage, "next_batch", original)
    assert latest_checkpoint(tmp_path / "part").name == "step-000005"
    sft(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_sft_on_the_builtin_task_reports_accuracy(data_dir, tmp_path):
    base = tiny_base(tmp_path, data_dir)
    over = [o for o in sft_overrides(base, tmp_path / "unused", tmp_path, steps=2) if not o.startswith("data.")]
    over += ['data.task="arith_en"', "data.task_examples=40", 'data.eval_task="arith_en"', "data.eval_examples=4",
             "data.eval_max_new_tokens=8", "data.seq_len=256"]
    result = sft(load_config(SFTConfig, None, over))
    assert 0.0 <= result["val_accuracy"] <= 1.0 and "val_format" in result


def test_bad_inputs_are_clear_errors(data_dir, tmp_path):
    base = tiny_base(tmp_path, data_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "only"}\n')
    with pytest.raises(DijiError, match=r"bad.jsonl:2: .*prompt"):
        sft(load_config(SFTConfig, None, sft_overrides(base, bad, tmp_path)))
    with pytest.raises(DijiError, match="not found"):
        sft(load_config(SFTConfig, None, sft_overrides(base, tmp_path / "missing.jsonl", tmp_path)))
    with pytest.raises(DijiError, match="train.init_from"):
        load_config(SFTConfig, None, [f"data.path={json.dumps(str(bad))}"])
    with pytest.raises(DijiError, match="exactly one of data.path"):
        load_config(SFTConfig, None, [f"train.init_from={json.dumps(str(base))}", 'data.path="x"', 'data.task="arith"'])
    long = write_records(tmp_path / "ok.jsonl")
    with pytest.raises(DijiError, match="data.seq_len"):
        sft(load_config(SFTConfig, None, sft_overrides(base, long, tmp_path) + ["data.seq_len=8"]))

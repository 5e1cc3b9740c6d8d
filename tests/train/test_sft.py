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


@pytest.mark.parametrize("packing", ["false", "true"])
def test_sft_resume_after_a_crash_equals_uninterrupted(data_dir, tmp_path, monkeypatch, packing):
    base = tiny_base(tmp_path, data_dir)
    data = write_records(tmp_path / "chat.jsonl")
    pack = [f"data.packing={packing}"]
    sft(load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "full", steps=12) + pack))
    from diji.train import sft as sft_mod

    original = sft_mod.SFTStage.next_batch
    calls = {"n": 0}

    def crash_after_seven(self):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash")
        return original(self)

    part = load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "part", steps=12) + pack)
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
    with pytest.raises(DijiError, match=r"bad.jsonl: record 2: .*fields found: prompt"):
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


def test_packed_and_padded_give_the_same_per_token_loss(data_dir, tmp_path):
    """Same examples, same weights: packing (block-diagonal mask, restarting positions) changes nothing."""
    import torch

    from diji.data.chat import render
    from diji.data.tokenizer import Tokenizer
    from diji.kernels import ops
    from diji.train.sft import IGNORE, pack_rows, pad_batch, read_records

    tok = Tokenizer.from_file(data_dir / "tokenizer.json")
    rows = [render(c, tok) for c in read_records(write_records(tmp_path / "c.jsonl", 6))]
    model = Transformer(ModelConfig(**TINY))
    model.init_weights(seed=1)
    model.eval()
    x, y = pad_batch(rows, tok.pad_id)
    with torch.no_grad():
        padded = float(ops.cross_entropy(model(x), y, ignore_index=IGNORE))
    half = sum(len(r[0]) - 1 for r in rows[:3])
    T = max(half, sum(len(r[0]) - 1 for r in rows[3:])) + 5  # two rows of three, with a padded tail
    px, py, pos, attn, real = pack_rows([rows[:3], rows[3:]], T, tok.pad_id)
    with torch.no_grad():
        packed = float(ops.cross_entropy(model(px, position_ids=pos, attention_mask=attn), py, ignore_index=IGNORE))
    assert int((py != IGNORE).sum()) == int((y != IGNORE).sum())
    assert int(real.sum()) == sum(len(r[0]) - 1 for r in rows)
    assert abs(packed - padded) < 1e-5
    assert pos[0, len(rows[0][0]) - 1] == 0  # the second conversation restarts at position 0
    assert not bool(attn[0, 0, len(rows[0][0]) - 1, 0])  # and cannot see the first one


@pytest.mark.parametrize("packing", [False, True])
def test_formats_and_containers_train_without_conversion(data_dir, tmp_path, packing, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
    from test_records import _write_all

    base = tiny_base(tmp_path, data_dir)
    files = _write_all(tmp_path)
    for name in (["json", "jsonl", "parquet", "save_to_disk"] if not packing else ["json"]):
        over = sft_overrides(base, files[name], tmp_path, name=f"{name}-{packing}", steps=2)
        result = sft(load_config(SFTConfig, None, [*over, f"data.packing={str(packing).lower()}",
                                                   "data.val_fraction=0.34"]))
        assert result["val_loss"] > 0
    err = capsys.readouterr().err
    assert "format alpaca (JSON array)" in err and ("packed batches" in err) == packing


def test_overlong_policy_is_counted_and_printed(data_dir, tmp_path, capsys):
    base = tiny_base(tmp_path, data_dir)
    data = write_records(tmp_path / "chat.jsonl")
    with open(data, "a") as f:
        for i in range(3):
            f.write(json.dumps({"prompt": "say " + "very long " * 60, "response": f"ok {i}"}) + "\n")
    sft(load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "drop", steps=1)))
    assert "3 over-long records dropped (data.overlong=drop" in capsys.readouterr().err
    result = sft(load_config(SFTConfig, None, sft_overrides(base, data, tmp_path, "cut", steps=1)
                             + ['data.overlong="truncate"']))
    assert "3 over-long records truncated" in capsys.readouterr().err
    assert read_lineage(result["checkpoint"])["overlong_truncated"] == 3

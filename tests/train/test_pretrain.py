import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from diji.config import load_config
from diji.errors import DijiError
from diji.observe.metrics import read_metrics
from diji.train.checkpoint import latest_checkpoint, load_checkpoint, verify_checkpoint
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_tiny_pretrain_loss_falls_and_writes_artifacts(data_dir, tmp_path):
    cfg = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=40) + ["train.eval_every=10"])
    result = pretrain(cfg)
    run = tmp_path / "t"
    curve = [loss for _, loss in losses(run)]
    assert curve[-1] < 0.6 * curve[0]
    evals = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert evals[-1] < evals[0]
    ckpt = latest_checkpoint(run)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "lineage.json", "train_state.pt"):
        assert (ckpt / name).is_file(), name
    lineage = json.loads((ckpt / "lineage.json").read_text())
    assert lineage["step"] == 40 and lineage["tokens_seen"] == 40 * 4 * 32
    assert lineage["data_manifest_sha256"] and lineage["config"]["train"]["max_steps"] == 40
    assert result["checkpoint"] == str(ckpt.resolve())
    assert "<svg" in (run / "report.html").read_text()
    assert (run / "config.toml").is_file()
    rec = read_metrics(run / "metrics.jsonl")[-1]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(rec)
    hf = json.loads((ckpt / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["num_key_value_heads"] == 2


def test_resume_in_process_after_a_crash_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    full = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "full", steps=12))
    pretrain(full)
    part = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "part", steps=12))
    from diji.train import pretrain as pretrain_mod

    original = pretrain_mod.PretrainStage.next_batch

    def crash_after_ten(self):
        if self.batches.cursor == 10:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", crash_after_ten)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(part)
    monkeypatch.setattr(pretrain_mod.PretrainStage, "next_batch", original)
    assert latest_checkpoint(tmp_path / "part").name == "step-000008"
    pretrain(part, resume=True)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_resume_after_sigkill_matches_uninterrupted_exactly(data_dir, tmp_path):
    """Kill a real `diji train pretrain` process mid-run with SIGKILL, resume, compare the loss curves."""
    steps = 60
    over = tiny_overrides(data_dir, tmp_path, "killed", steps=steps) + ["train.save_every=5"]
    (tmp_path / "empty.toml").write_text("")
    cmd = [sys.executable, "-m", "diji", "train", "pretrain", "--config", str(tmp_path / "empty.toml")]
    args = [a for o in over for a in ("--set", o)]
    proc = subprocess.Popen(cmd + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ck = latest_checkpoint(tmp_path / "killed")
        if ck is not None and int(ck.name.split("-")[1]) >= 10:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(tmp_path / "killed").name.split("-")[1])
    assert 10 <= killed_at < steps, "the run must be killed mid-way"
    done = subprocess.run(cmd + args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, "straight", steps=steps))
    pretrain(ref)
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert len(losses(tmp_path / "killed")) == steps


def test_flipped_byte_in_weights_is_detected(data_dir, tmp_path):
    pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=4)))
    ckpt = latest_checkpoint(tmp_path / "t")
    load_checkpoint(ckpt)  # intact: loads
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(DijiError, match="does not match its sha256"):
        load_checkpoint(ckpt)
    weights.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    with pytest.raises(DijiError, match="sha256"):
        verify_checkpoint(ckpt)


def test_checkpoint_weights_reload_identically(data_dir, tmp_path):
    pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=4)))
    ckpt = latest_checkpoint(tmp_path / "t")
    a = load_checkpoint(ckpt).model.eval()
    b = load_checkpoint(ckpt).model.eval()
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_wrong_vocab_and_missing_data_are_clear_errors(data_dir, tmp_path):
    with pytest.raises(DijiError, match="model.vocab_size"):
        pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path) + ["model.vocab_size=100"]))
    with pytest.raises(DijiError, match="diji data prepare"):
        pretrain(load_config(PretrainConfig, None, tiny_overrides(tmp_path / "nope", tmp_path)))


def test_a_used_run_folder_needs_resume_or_overwrite(data_dir, tmp_path):
    over = tiny_overrides(data_dir, tmp_path, steps=4)
    pretrain(load_config(PretrainConfig, None, over))
    before = losses(tmp_path / "t")
    with pytest.raises(DijiError, match="already holds a run; pass --resume to continue it, --overwrite"):
        pretrain(load_config(PretrainConfig, None, over))
    assert losses(tmp_path / "t") == before  # refused before touching anything
    # a longer budget may resume; the curve goes on
    pretrain(load_config(PretrainConfig, None, over + ["train.max_steps=6"]), resume=True)
    assert [s for s, _ in losses(tmp_path / "t")] == list(range(1, 7))
    # anything else that changes is named
    with pytest.raises(DijiError, match=r"differs from the saved one in model.hidden_size, optim.lr \("):
        pretrain(load_config(PretrainConfig, None, over + ["optim.lr=1e-3", "model.hidden_size=16"]), resume=True)
    pretrain(load_config(PretrainConfig, None, over + ["optim.lr=1e-3"]), overwrite=True)
    assert [s for s, _ in losses(tmp_path / "t")] == list(range(1, 5))
    assert json.loads((latest_checkpoint(tmp_path / "t") / "lineage.json").read_text())["config"]["optim"]["lr"] == 1e-3


def test_cli_overwrite_and_resume_flags(data_dir, tmp_path):
    args = [a for o in tiny_overrides(data_dir, tmp_path, steps=2) for a in ("--set", o)]
    cmd = [sys.executable, "-m", "diji", "train", "pretrain", "--quiet", *args]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=120).returncode == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    both = subprocess.run([*cmd, "--resume", "--overwrite"], capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "exclude each other" in both.stderr
    over = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True, timeout=120)
    assert over.returncode == 0, over.stderr
    assert json.loads(over.stdout)["step"] == 2

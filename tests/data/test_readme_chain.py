"""The README's chain, as written (only sizes shrunk with --set): prepare → pretrain → resume → generate →
report → lineage → sft."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _diji(*args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "diji", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"diji {' '.join(args)} failed:\n{r.stderr[-2000:]}"
    return r.stdout + r.stderr


@pytest.mark.slow
def test_readme_chain_runs_as_written(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sys.path.insert(0, str(Path(__file__).parent))
    from mixed_corpus import generate

    for d in generate(n_clean=120, n_junk=10, n_families=4, seed=5):
        (corpus / f"{d.id}.txt").write_text(d.text, encoding="utf-8")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    _diji("data", "prepare", "--input", "corpus/", "--out", "data/mine", cwd=tmp_path)
    small = ["--set", "train.max_steps=4", "--set", "train.batch_size=2", "--set", "data.seq_len=32",
             "--set", "train.save_every=2", "--set", "train.eval_every=2", "--set", "train.eval_batches=1",
             "--set", "model.num_hidden_layers=1", "--set", "model.hidden_size=64",
             "--set", "model.intermediate_size=128", "--set", "run.progress=false"]
    # README: diji train pretrain --config examples/pretrain.toml --set data.path="data/mine"
    _diji("train", "pretrain", "--config", "examples/pretrain.toml", "--set", 'data.path="data/mine"', *small,
          cwd=tmp_path)
    _diji("train", "pretrain", "--config", "examples/pretrain.toml", "--resume", *small, cwd=tmp_path)
    ckpt = "runs/pretrain-small/checkpoints/step-000004"
    _diji("generate", ckpt, "--prompt", "def ", "--temperature", "0.8", "--top-k", "40", "--max-new-tokens", "4",
          cwd=tmp_path)
    _diji("report", "runs/pretrain-small", cwd=tmp_path)
    assert "data" in _diji("lineage", ckpt, cwd=tmp_path)
    # README: diji train sft --config examples/sft.toml --set train.init_from="runs/pretrain-small/..."
    out = _diji("train", "sft", "--config", "examples/sft.toml", "--set", f'train.init_from="{ckpt}"',
                "--set", "data.task_examples=40", "--set", 'data.eval_task=""', "--set", "train.max_steps=2",
                "--set", "train.batch_size=2", "--set", "train.eval_batches=1", "--set", "run.progress=false",
                cwd=tmp_path)
    assert "sft data: task arith" in out

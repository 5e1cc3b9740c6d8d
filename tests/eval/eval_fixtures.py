"""Fixtures for the evaluation tests: a data directory of GSM8K-style arithmetic text and a tiny checkpoint
trained on it for a few seconds, so that generation produces numbers and `####` and is sometimes right.

Test modules load this file as a plugin (`pytest_plugins = ("eval_fixtures",)`): a nested conftest.py
would clash with tests/conftest.py under pytest's default import mode.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from evalkit import arithmetic_docs

from testkit import tiny_overrides, write_data_dir


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> Path:
    # Six engineers share two cores: torch's intra-op threads then spin against each other and tiny
    # matmuls get ~50x slower. One thread keeps these tests in seconds (only this pytest process).
    import torch

    torch.set_num_threads(1)
    return write_data_dir(tmp_path_factory.mktemp("evaldata"), arithmetic_docs(400, seed=2), vocab_size=320)


@pytest.fixture(scope="session")
def tiny_ckpt(eval_data, tmp_path_factory) -> Path:
    from diji.config import load_config
    from diji.train.config import PretrainConfig
    from diji.train.pretrain import pretrain

    out = tmp_path_factory.mktemp("evalrun")
    # ~7 s on one thread: enough for a 2-layer model to learn the "a + b = c\n#### c" format and get
    # most sums right, so generation is not degenerate; step 150 is the "earlier model" to compare with.
    overrides = tiny_overrides(eval_data, out, "tiny", steps=300) + [
        "model.vocab_size=320", "model.hidden_size=64", "model.max_position_embeddings=256",
        "data.seq_len=64", "train.batch_size=8", "optim.lr=3e-3", "train.save_every=150",
        "train.eval_every=300", "train.log_every=50", "train.keep_checkpoints=2",
    ]
    return Path(pretrain(load_config(PretrainConfig, None, overrides))["checkpoint"])


@pytest.fixture(scope="session")
def early_ckpt(tiny_ckpt) -> Path:
    """The same run's step-150 checkpoint."""
    return tiny_ckpt.parent / "step-000150"


@pytest.fixture
def ckpt(tiny_ckpt, tmp_path) -> Path:
    """A private copy: tests append to lineage.json and must not see each other's records."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst, ignore=shutil.ignore_patterns("train_state.pt"))
    return dst

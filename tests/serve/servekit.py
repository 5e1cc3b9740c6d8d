"""Helpers for the serving tests: a tiny trained checkpoint (made once per session) and a live server.

Not a conftest.py on purpose: a second conftest module would shadow `tests/conftest.py` for the other
test folders that import helpers from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diji.config import load_config
from diji.safety.policy import Policy
from diji.serve.engine import EngineConfig
from diji.serve.server import ServeConfig, ServerThread, load_server
from diji.train.checkpoint import latest_checkpoint
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain

MODEL_NAME = "tiny"
_made: dict[str, Path] = {}


def make_checkpoint(data_dir: Path, out: Path, steps: int = 10) -> Path:
    """A 2-layer model trained a few steps on the synthetic corpus, with a 256-token context."""
    overrides = [
        f"data.path={json.dumps(str(data_dir))}", "data.seq_len=64",
        f"run.out_dir={json.dumps(str(out))}", 'run.name="serve"', "run.progress=false",
        "model.vocab_size=300", "model.hidden_size=32", "model.num_hidden_layers=2",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.intermediate_size=64",
        "model.max_position_embeddings=256",
        f"train.max_steps={steps}", "train.batch_size=4", f"train.eval_every={steps}", "train.eval_batches=1",
        f"train.save_every={steps}", "optim.warmup_steps=2", "optim.lr=1e-2",
    ]
    pretrain(load_config(PretrainConfig, None, overrides))
    return latest_checkpoint(out / "serve")


@pytest.fixture(scope="session")
def checkpoint(data_dir, tmp_path_factory) -> Path:
    # Cached in the module so that every test module importing this fixture shares one checkpoint.
    if "ckpt" not in _made:
        before = torch.get_num_threads()
        torch.set_num_threads(1)  # see one_torch_thread
        try:
            _made["ckpt"] = make_checkpoint(data_dir, tmp_path_factory.mktemp("serve-ckpt"))
        finally:
            torch.set_num_threads(before)
    return _made["ckpt"]


def start_server(ckpt: Path, policy: Policy | None = None, api_key: str = "", max_batch_size: int = 8,
                 max_body_bytes: int = 1 << 20) -> ServerThread:
    cfg = ServeConfig(api_key=api_key, model_name=MODEL_NAME, max_body_bytes=max_body_bytes,
                      engine=EngineConfig(max_batch_size=max_batch_size))
    return ServerThread(load_server(ckpt, cfg, policy, device="cpu")).start()


@pytest.fixture(scope="module", autouse=False)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU OpenMP threads spinning
    against other processes make them many times slower; restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

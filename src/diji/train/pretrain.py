"""Pretraining: next-token prediction on packed token shards — the stage's own part of the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diji.config import to_dict
from diji.errors import DijiError
from diji.kernels import ops
from diji.model.transformer import Transformer
from diji.train.config import PretrainConfig
from diji.train.loader import TokenBatches, fixed_windows
from diji.train.loop import Job, Trainer, init_model, manifest_sha, seed_everything


class PretrainStage:
    def __init__(self, cfg: PretrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.batches = TokenBatches(cfg.data.path, "train", cfg.train.batch_size, cfg.data.seq_len, cfg.run.seed)
        vocab = self.batches.manifest.get("vocab_size", 0)
        if vocab > cfg.model.vocab_size:
            raise DijiError(
                f"the data's tokenizer has {vocab} tokens but model.vocab_size is {cfg.model.vocab_size}; "
                f"set model.vocab_size = {vocab}"
            )

    def next_batch(self):
        return self.batches.next()

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        loss = ops.cross_entropy(model(x), y)
        return loss, {"tokens": y.numel()}

    def evaluate(self, model) -> dict[str, float]:
        total, count = 0.0, 0
        for x, y in fixed_windows(self.cfg.data.path, "val", self.cfg.train.batch_size, self.cfg.data.seq_len,
                                  self.cfg.train.eval_batches):
            x, y = x.to(self.device), y.to(self.device)
            total += float(ops.cross_entropy(model(x), y)) * y.numel()
            count += y.numel()
        return {"val_loss": total / count}

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])


def pretrain(cfg: PretrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    data_dir = Path(cfg.data.path)
    tokenizer_file = data_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise DijiError(f"{data_dir} has no tokenizer.json; run `diji data prepare` first")
    job = Job(
        run=cfg.run, optim=cfg.optim, loop=cfg.train, config=to_dict(cfg), tokenizer_file=tokenizer_file,
        data_sha256=manifest_sha(data_dir), parent=Path(cfg.train.init_from) if cfg.train.init_from else None,
        stage_name="pretrain",
    )
    seed_everything(cfg.run.seed)
    model = Transformer(cfg.model)
    init_model(model, job)
    trainer = Trainer(model, PretrainStage(cfg, torch.device("cpu")), job)
    trainer.stage.device = trainer.device
    return trainer.run(resume=resume, overwrite=overwrite)

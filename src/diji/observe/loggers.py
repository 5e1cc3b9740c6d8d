"""Experiment tracking: where a run's metrics go, chosen by `run.loggers = ["jsonl", ...]`.

- `jsonl` (default, always on): `metrics.jsonl`, one JSON object per logged step — the record every
  other view (report.html, the report card) is built from.
- `tensorboard`: event files under `RUN_DIR/tensorboard/` (`tensorboard --logdir runs`), the same
  scalars as metrics.jsonl, one tag per key. Extra `track` (the `tensorboard` package).
- `mlflow`: MLflow tracking in a SQLite file shared by the runs of one `run.out_dir`
  (`OUT_DIR/mlflow.db`; `mlflow ui --backend-store-uri sqlite:///OUT_DIR/mlflow.db`), the resolved config
  as params. Extra `track`. Chosen over W&B offline because its store is readable on this machine with
  no account and no upload (W&B's offline runs are viewed only after `wandb sync` to a server), and over
  MLflow's plain-file store because MLflow 3 refuses that one unless an opt-out variable is set.

Each back-end is imported when a run asks for it, never at `import diji`; a missing package is one clear
error naming the extra. Only rank 0 logs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Protocol

from diji.config import flatten
from diji.errors import DijiError
from diji.observe.metrics import MetricsLog

LOGGERS = ("jsonl", "tensorboard", "mlflow")


class Logger(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record one step's metrics (numbers; other values may be skipped by a back-end)."""

    def close(self) -> None: ...


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (bools and strings left out), as floats."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class JsonlLogger:
    def __init__(self, run_dir: Path) -> None:
        self._log = MetricsLog(run_dir / "metrics.jsonl")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._log.write({"step": step, **metrics})

    def close(self) -> None:
        self._log.close()


class TensorBoardLogger:
    def __init__(self, run_dir: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package for its protobufs
            raise DijiError("run.loggers has 'tensorboard' but the package is missing: "
                            "pip install 'diji[track]'") from e
        # purge_step: on resume, events logged after the checkpoint's step are hidden, as metrics.jsonl
        # is truncated, so the curve is not drawn twice.
        self._w = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in scalars(metrics).items():
            self._w.add_scalar(k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class MLflowLogger:
    RUN_ID_FILE = "mlflow_run_id"

    def __init__(self, run_dir: Path, config: dict, start_step: int) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise DijiError("run.loggers has 'mlflow' but the package is missing: pip install 'diji[track]'") from e
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.store = f"sqlite:///{(run_dir.parent / 'mlflow.db').resolve()}"
        self._client = MlflowClient(tracking_uri=self.store)
        id_file = run_dir / self.RUN_ID_FILE
        if start_step and id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            return
        exp = self._client.get_experiment_by_name("diji")
        exp_id = exp.experiment_id if exp else self._client.create_experiment("diji")
        run = self._client.create_run(exp_id, run_name=run_dir.name)
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id + "\n")
        from mlflow.entities import Param

        flat = flatten(config)
        params = [Param(k, json.dumps(v, ensure_ascii=False)[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, v, now, step) for k, v in scalars(metrics).items() if math.isfinite(v)]
        if ms:
            self._client.log_batch(self.run_id, metrics=ms)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


class Loggers:
    """Fans one record out to every chosen back-end."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(step, metrics)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def open_loggers(names: tuple[str, ...] | list[str], run_dir: Path, config: dict, start_step: int = 0) -> Loggers:
    """The back-ends named in run.loggers; jsonl is always included (the report is built from it)."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise DijiError(f"run.loggers: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
    out: list[Logger] = [JsonlLogger(run_dir)]
    try:
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                out.append(TensorBoardLogger(run_dir, start_step))
            elif name == "mlflow":
                out.append(MLflowLogger(run_dir, config, start_step))
    except BaseException:
        Loggers(out).close()
        raise
    return Loggers(out)

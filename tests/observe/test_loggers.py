"""run.loggers: TensorBoard and MLflow hold the same scalars as metrics.jsonl (read back from their files)."""

import math

import pytest

from diji.config import load_config
from diji.errors import DijiError
from diji.observe.loggers import open_loggers, scalars
from diji.observe.metrics import read_metrics
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0 = keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in read_metrics(run_dir / "metrics.jsonl"):
        for k, v in scalars({k: v for k, v in r.items() if k != "step"}).items():
            out.setdefault(k, []).append((r["step"], v))
    return out


def test_tensorboard_event_file_holds_the_same_values_as_metrics_jsonl(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=8)
                      + ["run.loggers=jsonl,tensorboard"])
    pretrain(cfg)
    run = tmp_path / "t"
    want, got = jsonl_scalars(run), tensorboard_scalars(run / "tensorboard")
    assert set(got) == set(want) and {"loss", "val_loss", "lr", "grad_norm"} <= set(got)
    for tag, series in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        # TensorBoard stores float32: equal to the JSON float64 within float32 rounding
        for (_, a), (_, b) in zip(got[tag], series, strict=True):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30), (tag, a, b)
    assert len(want["loss"]) == 8


def test_resumed_run_shows_each_step_once_in_tensorboard(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    over = tiny_overrides(data_dir, tmp_path, steps=8) + ["run.loggers=tensorboard"]
    pretrain(load_config(PretrainConfig, None, over))
    (tmp_path / "t" / "latest").write_text("checkpoints/step-000004\n")  # as if it died after step 4
    pretrain(load_config(PretrainConfig, None, over), resume=True)
    got = tensorboard_scalars(tmp_path / "t" / "tensorboard")
    steps = [s for s, _ in got["loss"]]
    assert steps == list(range(1, 9))
    # the purged first attempt's steps 5-8 are hidden: the values are those of metrics.jsonl
    want = dict(jsonl_scalars(tmp_path / "t")["loss"])
    assert all(math.isclose(v, want[s], rel_tol=1e-6) for s, v in got["loss"][-4:])


def test_mlflow_run_holds_the_metrics_and_the_config(data_dir, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    cfg = load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path, steps=4) + ["run.loggers=mlflow"])
    pretrain(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = (tmp_path / "t" / "mlflow_run_id").read_text().strip()
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
    assert history == jsonl_scalars(tmp_path / "t")["loss"]
    run = client.get_run(run_id)
    assert run.data.params["train.max_steps"] == "4" and run.info.status == "FINISHED"


def test_unknown_logger_is_a_clear_error(tmp_path):
    with pytest.raises(DijiError, match="unknown logger 'wandb'"):
        open_loggers(["wandb"], tmp_path, {})

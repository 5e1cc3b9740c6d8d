import json

from diji.observe.metrics import MetricsLog, read_metrics, truncate_after
from diji.observe.report import write_report


def test_metrics_log_appends_and_truncates_and_skips_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for s in range(1, 6):
        log.write({"step": s, "loss": 5.0 - s, "lr": 0.1})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a crash mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    truncate_after(path, 3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_nan_is_logged_visibly_not_crashing(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 1, "loss": float("nan")})
    log.close()
    assert read_metrics(tmp_path / "m.jsonl")[0]["loss"] == "nan"


def test_report_has_a_chart_per_series_group(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 11):
            rec = {"step": s, "loss": 6 - 0.3 * s, "lr": 1e-3, "grad_norm": 1.0, "reward_mean": 0.1 * s}
            if s % 5 == 0:
                rec["val_loss"] = 6.1 - 0.3 * s
            f.write(json.dumps(rec) + "\n")
    (tmp_path / "config.toml").write_text('[run]\nname = "<x>"\n')
    html = write_report(tmp_path).read_text()
    assert html.count("<svg") == 4  # loss+val_loss, reward, lr, grad_norm
    assert "val_loss (last" in html and "reward / accuracy" in html
    assert "&lt;x&gt;" in html  # config is escaped
    assert "http" not in html.replace("http-equiv", "")  # self-contained: no external resources


def test_report_of_an_empty_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert "No metrics logged yet" in write_report(tmp_path).read_text()

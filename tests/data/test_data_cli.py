from __future__ import annotations

import json
from pathlib import Path

import pytest

from diji.cli import main


def _docs(path: Path, n: int = 30) -> Path:
    path.write_text("".join(json.dumps({"text": f"line {i}: the cat sat on the mat. 猫坐在垫子上。"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def test_prepare_report_and_tokenizer_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _docs(tmp_path / "in.jsonl")
    assert main(["tokenizer", "train", "--input", str(src), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                 "--quiet"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    rc = main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "d"), "--quiet",
               "--tokenizer", str(tmp_path / "tok" / "tokenizer.json"), "--set", "num_workers=1",
               "--set", "quality.enabled=false", "--set", "dedup.near=false"])
    assert rc == 0
    assert "train" in capsys.readouterr().out
    assert main(["data", "report", str(tmp_path / "d"), "--verify"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("# Data report") and "## Stages" in report


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "prepare", "--input", "/nonexistent/x.jsonl", "--out", "{tmp}/o"],
        ["data", "prepare", "--input", "{src}", "--out", "{tmp}/o", "--set", "vocab_size=5"],
        ["data", "prepare", "--input", "{src}", "--out", "{tmp}/o", "--set", "no_such_key=1"],
        ["data", "prepare", "--input", "{src}", "--out", "{tmp}/o", "--config", "{tmp}/missing.toml"],
        ["data", "report", "{tmp}"],
        ["tokenizer", "train", "--input", "/nonexistent", "--vocab-size", "300", "--out", "{tmp}/t"],
        ["tokenizer", "train", "--input", "{src}", "--vocab-size", "3", "--out", "{tmp}/t"],
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _docs(tmp_path / "in.jsonl", 3)
    argv = [a.format(tmp=tmp_path, src=src) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diji: error: ") and err.count("\n") == 1 and "Traceback" not in err

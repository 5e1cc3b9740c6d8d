"""The flywheel export on hand-written audit logs: joins, votes, filters, redaction, duplicates."""

from __future__ import annotations

import json

import pytest

from diji.errors import DijiError
from diji.safety.audit import AuditLog
from diji.serve.flywheel import export_flywheel


def chat(log: AuditLog, rid: str, user: str, reply: str, finish: str = "stop") -> None:
    log.request(id=rid, key_id="k", endpoint="chat", status=200, finish_reasons=[finish],
                messages=[{"role": "user", "content": user}], output=[reply])


def test_export_keeps_well_rated_finished_unique_conversations(tmp_path):
    log = AuditLog(tmp_path / "audit", log_text=True)
    chat(log, "a", "capital of France?", "Paris. Write to me at x@y.org")
    chat(log, "b", "capital of France?", "Paris. Write to me at x@y.org")   # same conversation again
    chat(log, "c", "2+2?", "5", finish="stop")
    chat(log, "d", "long story", "once upon", finish="length")
    chat(log, "e", "blocked", "", finish="content_filter")
    log.request(id="f", key_id="k", endpoint="completions", status=200, finish_reasons=["stop"])
    for rid, rating in (("a", 1), ("b", 1), ("c", 1), ("c", -1), ("d", 1), ("e", 1), ("f", 1), ("zz", 1)):
        log.feedback(rid, rating, "", "k")
    log.close()
    out = tmp_path / "sft.jsonl"
    stats = export_flywheel(tmp_path / "audit", out)
    assert stats.as_dict() == {"requests": 5, "rated": 5, "exported": 1, "skipped_rating": 1, "skipped_no_text": 0,
                               "skipped_finish": 2, "duplicates": 1}
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["messages"] == [{"role": "user", "content": "capital of France?"},
                               {"role": "assistant", "content": "Paris. Write to me at [EMAIL]"}]
    assert export_flywheel(tmp_path / "audit", out, finish_reasons=("stop", "length")).exported == 2


def test_export_without_logged_text_or_audit_files(tmp_path):
    quiet = AuditLog(tmp_path / "quiet")  # log_text off: ratings exist, conversations do not
    chat(quiet, "a", "hi", "hello")
    quiet.feedback("a", 1, "", "k")
    quiet.close()
    stats = export_flywheel(tmp_path / "quiet", tmp_path / "out.jsonl")
    assert stats.skipped_no_text == 1 and stats.exported == 0 and (tmp_path / "out.jsonl").read_text() == ""
    with pytest.raises(DijiError, match="no audit"):
        export_flywheel(tmp_path / "missing", tmp_path / "x.jsonl")


def test_data_flywheel_command(tmp_path):
    import subprocess
    import sys

    log = AuditLog(tmp_path / "audit", log_text=True)
    chat(log, "a", "1+1?", "2")
    log.feedback("a", 1, "", "k")
    log.close()
    run = [sys.executable, "-m", "diji", "data", "flywheel", "--input", str(tmp_path / "audit"), "--out"]
    done = subprocess.run([*run, str(tmp_path / "sft.jsonl")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["exported"] == 1
    assert json.loads((tmp_path / "sft.jsonl").read_text())["messages"][1]["content"] == "2"
    bad = subprocess.run([*run[:-3], "--from", str(tmp_path / "none"), "--out", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "audit" in bad.stderr

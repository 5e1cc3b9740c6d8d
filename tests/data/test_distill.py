"""`diji data distill`: only verified replies kept (with their <think> trace), retries, crash recovery,
and end to end against a real `diji serve` — SIGKILL mid-run, resume, then `diji train sft` on the output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diji.cli import main
from diji.data.distill import DistillConfig, EndpointTeacher, distill, join_reasoning, recover
from diji.errors import DijiError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from servekit import make_checkpoint, start_server  # noqa: E402

# Keeps about half of any teacher's replies, deterministically, so the filter is visible.
EVEN = "def reward(completion, reference):\n    return float(len(completion) % 2 == 0)\n"


def problems(n: int) -> list[dict]:
    return [{"question": f"What is {i} plus {i % 3}?", "answer": f"{i} + {i % 3} = {i + i % 3}\n#### {i + i % 3}"}
            for i in range(n)]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


class Scripted:
    """A teacher that answers from a table: right, wrong, and right-without-reasoning replies."""

    concurrency = 3

    def __init__(self):
        self.calls = []

    def sample(self, messages, k, seed):
        q = messages[-1]["content"]
        self.calls.append((q, k, seed))
        i = int(q.split()[2])
        right = i + i % 3
        return [f"<think>\n{i}+{i % 3}={right}\n</think>\n#### {right}", f"#### {right + 1}",
                f"#### {right}", f"<think>\n{i}+{i % 3}={right}\n</think>\n#### {right}"][:k]


def test_only_verified_replies_are_kept_with_their_trace(tmp_path):
    rows = problems(6) + [problems(1)[0], {"question": "no answer", "answer": "unknown"}]
    prompts = write(tmp_path / "p.jsonl", rows)
    out = tmp_path / "sft.jsonl"
    teacher = Scripted()
    stats = distill(DistillConfig(teacher="x", prompts=str(prompts), out=str(out), samples=4), False, teacher)
    assert (stats.prompts, stats.duplicates, stats.skipped_items) == (6, 1, 1)
    assert stats.replies == 24 and stats.verified == 18  # 3 of 4 right; the 4th repeats the 1st exactly
    recs = read(out)
    assert stats.kept == len(recs) == 12 and stats.with_think == 6
    for r in recs:
        reply = r["messages"][-1]["content"]
        assert r["messages"][-1]["role"] == "assistant" and r["distill"]["of"] == 2
        q = r["messages"][0]["content"]
        i = int(q.split()[2])
        assert reply.endswith(f"#### {i + i % 3}")
    assert sorted({c[2] for c in teacher.calls}) == sorted(c[2] for c in teacher.calls)  # one seed per prompt
    # --require-think and --keep
    out2 = tmp_path / "think.jsonl"
    distill(DistillConfig(teacher="x", prompts=str(prompts), out=str(out2), samples=4, require_think=True, keep=1),
            False, Scripted())
    assert all(r["messages"][-1]["content"].startswith("<think>") for r in read(out2)) and len(read(out2)) == 6
    # A second run has nothing left to do.
    again = distill(DistillConfig(teacher="x", prompts=str(prompts), out=str(out), samples=4), False, Scripted())
    assert again.done_before == 6 and again.processed == 0 and len(read(out)) == 12


def test_under_torchrun_only_rank_zero_samples(tmp_path, monkeypatch):
    prompts = write(tmp_path / "p.jsonl", problems(3))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    teacher = Scripted()
    stats = distill(DistillConfig(teacher="x", prompts=str(prompts), out=str(tmp_path / "o.jsonl")), False, teacher)
    assert stats.prompts == 3 and stats.processed == 0 and not teacher.calls and not (tmp_path / "o.jsonl").exists()
    monkeypatch.setenv("RANK", "0")
    assert distill(DistillConfig(teacher="x", prompts=str(prompts), out=str(tmp_path / "o.jsonl")), False,
                   teacher).processed == 3


def test_reasoning_returned_separately_is_put_back():
    msg = {"content": "#### 4", "reasoning_content": "2+2=4"}
    assert join_reasoning(msg) == "<think>\n2+2=4\n</think>\n\n#### 4"
    assert join_reasoning({"content": "<think>a</think>#### 4", "reasoning_content": "a"}) == "<think>a</think>#### 4"


def test_recover_cuts_torn_lines_and_incomplete_groups(tmp_path):
    out, ledger = tmp_path / "o.jsonl", tmp_path / "o.jsonl.done.jsonl"
    a = [{"messages": [], "distill": {"prompt": "a", "sample": j, "of": 2}} for j in range(2)]
    b = [{"messages": [], "distill": {"prompt": "b", "sample": 0, "of": 3}}]
    out.write_text("".join(json.dumps(x) + "\n" for x in a + b) + '{"messages": [], "dis')
    ledger.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "z", "kept": 0}) + "\n{\"pro")
    assert recover(out, ledger) == {"a", "z"}
    assert [x["distill"]["prompt"] for x in read(out)] == ["a", "a"]  # b had 1 of its 3 records
    assert ledger.read_text().endswith("}\n")


def test_endpoint_retries_then_gives_up_or_stops(tmp_path, monkeypatch):
    import httpx

    from diji.data import distill as mod

    monkeypatch.setattr(mod.time, "sleep", lambda s: None)
    replies = {"n": 0}

    def handler(request):
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        replies["n"] += 1
        if replies["n"] <= 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        body = json.loads(request.content)
        return httpx.Response(200, json={"choices": [{"index": i, "message": {"content": f"#### {i}"}}
                                                     for i in range(body["n"])]})

    cfg = DistillConfig(teacher="http://t", prompts="p", out="o", samples=2, retries=2)
    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    t = EndpointTeacher("http://t", cfg)
    assert t.model == "m" and t.sample([{"role": "user", "content": "q"}], 2, 0) == ["#### 0", "#### 1"]
    replies["n"] = -10  # 503 until the retries run out
    with pytest.raises(mod.TeacherError, match="gave up after 3 attempts: HTTP 503 busy"):
        t.sample([{"role": "user", "content": "q"}], 2, 0)
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(
        lambda r: httpx.Response(401, json={"error": {"message": "bad key"}})), **kw))
    prompts = write(tmp_path / "p.jsonl", problems(2))
    with pytest.raises(DijiError, match="HTTP 401 bad key"):
        distill(DistillConfig(teacher="http://t", prompts=str(prompts), out=str(tmp_path / "o"), model="m"), False)


def test_bad_inputs_give_one_line(tmp_path, capsys):
    prompts = write(tmp_path / "p.jsonl", [{"question": "q", "answer": "no idea"}])
    assert main(["data", "distill", "--teacher", "http://x", "--prompts", str(prompts), "--out", "o"]) == 2
    assert "no item has a usable answer" in capsys.readouterr().err
    ok = write(tmp_path / "ok.jsonl", problems(1))
    assert main(["data", "distill", "--teacher", str(tmp_path / "nope"), "--prompts", str(ok), "--out", "o"]) == 2
    assert "give an http(s):// URL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(data_dir, tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt = make_checkpoint(data_dir, tmp_path_factory.mktemp("distill-ckpt"))
    server = start_server(ckpt)
    yield ckpt, server.url
    server.stop()
    torch.set_num_threads(before)


def test_end_to_end_against_diji_serve_with_sigkill_and_resume(served, tmp_path):
    ckpt, url = served
    n = 40
    prompts = write(tmp_path / "p.jsonl", problems(n))
    (tmp_path / "even.py").write_text(EVEN)
    args = ["data", "distill", "--teacher", url, "--prompts", str(prompts), "--samples", "3",
            "--verifier", f"{tmp_path / 'even.py'}:reward", "--max-tokens", "24", "--temperature", "1.0",
            "--concurrency", "2", "--quiet"]

    # The reference: one uninterrupted run.
    full = tmp_path / "full.jsonl"
    assert main([*args, "--out", str(full)]) == 0

    # The same run killed with SIGKILL once a few prompts are done, then resumed.
    out = tmp_path / "sft.jsonl"
    ledger = tmp_path / "sft.jsonl.done.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "diji", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ledger.exists() and ledger.read_text().count("\n") >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read(ledger))
    assert 4 <= killed_at < n  # it really died mid-run
    assert main([*args, "--out", str(out)]) == 0

    ids = [r["prompt"] for r in read(ledger)]
    assert len(ids) == len(set(ids)) == n  # every prompt once: none lost, none repeated
    recs = read(out)
    keys = [(r["distill"]["prompt"], r["distill"]["sample"]) for r in recs]
    assert len(keys) == len(set(keys)) and 0 < len(recs) < 3 * n
    assert all(len(r["messages"][-1]["content"]) % 2 == 0 for r in recs)  # only verified replies
    # Seeded requests: the resumed output holds exactly what the uninterrupted run wrote.
    def content(rows):
        return sorted((r["distill"]["prompt"], r["distill"]["sample"], r["messages"][-1]["content"]) for r in rows)

    assert content(recs) == content(read(full))

    # The output trains with `diji train sft` unchanged.
    sets = [f"train.init_from={json.dumps(str(ckpt))}", f"data.path={json.dumps(str(out))}",
            f"run.out_dir={json.dumps(str(tmp_path))}", 'run.name="sft"', "run.progress=false",
            "train.max_steps=3", "train.batch_size=4", "train.eval_every=0", "train.save_every=3",
            "data.val_fraction=0.1"]
    assert main(["train", "sft", *[a for s in sets for a in ("--set", s)]]) == 0
    assert (tmp_path / "sft" / "checkpoints" / "step-000003").is_dir()


def test_a_local_checkpoint_teacher(served, tmp_path):
    ckpt, _ = served
    prompts = write(tmp_path / "p.jsonl", problems(4))
    (tmp_path / "even.py").write_text(EVEN)
    cfg = DistillConfig(teacher=str(ckpt), prompts=str(prompts), out=str(tmp_path / "o.jsonl"), samples=3,
                        max_tokens=12, temperature=1.0, verifier=f"{tmp_path / 'even.py'}:reward")
    stats = distill(cfg, progress=False)
    assert stats.processed == 4 and stats.replies == 12 and stats.kept == len(read(tmp_path / "o.jsonl"))
    assert all(len(r["messages"][-1]["content"]) % 2 == 0 for r in read(tmp_path / "o.jsonl"))

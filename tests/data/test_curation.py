"""The curation stages inside `prepare`: statistics, rejected samples, decontamination, report, Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diji.data.corpus import build_default_corpus
from diji.data.curate import curate_chunk
from diji.data.prepare import DataConfig, load_manifest, prepare
from diji.data.report import curation_summary, render_report

EN = [
    "The village sat at the edge of a wide river, and most of the families who lived there had worked on "
    "the water for generations. In the spring the river rose with melted snow from the mountains, and the "
    "children were told to keep away from the banks. Write to {who}@example.org for the ferry timetable.",
    "Every morning the ferry left before sunrise with a load of vegetables, chickens and a few sleepy "
    "travellers. The ferryman knew each passenger by name, and he liked to talk about the weather, the price "
    "of grain and the strange habits of the people who lived in the city across the water.",
    "Natalia sold 48 clips in April and then she sold half as many clips in May. How many clips did "
    "Natalia sell altogether in April and May? She sold 48 / 2 = 24 clips in May, so 72 clips in total, "
    "and that is the answer that the teacher wrote on the board for all of the students in the class.",
]
ZH = [
    "我们村子坐落在一条大河的旁边，村里的大多数人家世世代代都靠这条河生活。每到春天，山上的积雪融化，"
    "河水就会上涨，大人们总是叮嘱孩子不要到河边去玩。有事请拨打{phone}联系村委会。",
    "每天清晨，渡船在太阳升起之前就出发了，船上装着蔬菜、鸡鸭，还有几个睡眼惺忪的旅客。摆渡的老人"
    "认识每一位乘客，他喜欢和大家聊天气、聊粮食的价格，也聊河对岸城里人的那些奇怪习惯。",
]
SPAM = "click here to buy the cheapest watches in the world " * 30


def _corpus(path: Path) -> Path:
    docs = []
    for i in range(6):
        docs.append(EN[0].format(who=f"user{i}") + f" Note {i}.")
        docs.append(ZH[0].format(phone=f"1381234{i:04d}") + f"第{i}号。")
    docs += [EN[1], EN[1], ZH[1], ZH[1].replace("老人", "老爷爷"), EN[2], SPAM, "今天天气很好。", "!!! ??? ..."]
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cur")
    src = _corpus(root / "in.jsonl")
    evalset = root / "eval.jsonl"
    evalset.write_text(json.dumps({"question": EN[2][:160], "answer": "72"}) + "\n", encoding="utf-8")
    cfg = DataConfig(vocab_size=300, num_workers=1, val_fraction=0.1)
    manifest = prepare([src], root / "out", cfg, decontaminate=[evalset], show_progress=False)
    return root / "out", manifest


def _stage(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["stats"]["stages"] if s["name"] == name)


def test_every_stage_counted(curated) -> None:
    out, m = curated
    names = [s["name"] for s in m["stats"]["stages"]]
    assert names == ["normalize", "langid", "quality", "decontaminate", "pii", "dedup_exact", "dedup_near"]
    stages = m["stats"]["stages"]
    for a, b in zip(stages, stages[1:], strict=False):
        assert a["docs_out"] == b["docs_in"]  # nothing vanishes between stages
    for s in stages:
        assert s["docs_in"] - s["docs_out"] == sum(s["dropped"].values())
        assert s["bytes_out"] <= s["bytes_in"] or s["name"] == "pii"
    assert m["stats"]["read"]["documents"] == stages[0]["docs_in"] == 20
    assert stages[-1]["docs_out"] == m["stats"]["documents"]["train"] + m["stats"]["documents"]["val"]


def test_stage_effects(curated) -> None:
    _, m = curated
    assert _stage(m, "langid")["dropped"] == {"language unknown": 1}
    assert _stage(m, "quality")["dropped"] == {"repetition: top 3-gram share": 1, "zh: too few characters": 1}
    assert _stage(m, "decontaminate")["dropped"] == {"shares an n-gram with an evaluation set": 1}
    assert _stage(m, "dedup_exact")["dropped"] == {"exact duplicate": 1}
    # the edited zh copy, and 5 of each family of 6 documents that differ in a name or number
    assert _stage(m, "dedup_near")["dropped"] == {"near duplicate": 1 + 5 + 5}
    pii = _stage(m, "pii")["extra"]
    assert pii["EMAIL"] >= 1 and pii["PHONE"] >= 1
    assert _stage(m, "langid")["extra"] == {"kept en": 10, "kept zh": 9}


def test_rejected_samples_written(curated) -> None:
    out, m = curated
    files = sorted(p.name for p in (out / "rejected").iterdir())
    assert files == sorted(m["stats"]["rejected_files"])
    assert {"quality.jsonl", "decontaminate.jsonl", "dedup_exact.jsonl", "dedup_near.jsonl"} <= set(files)
    rows = [json.loads(line) for line in (out / "rejected" / "dedup_near.jsonl").read_text().splitlines()]
    assert all(r["duplicate_of"] and r["source"] != r["duplicate_of"] for r in rows)
    quality = [json.loads(line) for line in (out / "rejected" / "quality.jsonl").read_text().splitlines()]
    assert any("cheapest watches" in r["text"] for r in quality)


def test_pii_scrubbed_in_shards(curated) -> None:
    import numpy as np

    from diji.data.prepare import open_shards
    from diji.data.tokenizer import Tokenizer

    out, _ = curated
    tok = Tokenizer.from_file(out)
    text = "".join(tok.decode(np.concatenate(open_shards(out, s)).tolist()) for s in ("train", "val"))
    assert "@example.org" not in text and "13812340000" not in text
    assert "<EMAIL>" in text and "<PHONE>" in text


def test_report_and_summary(curated) -> None:
    out, m = curated
    assert load_manifest(out) == m
    report = render_report(m, out)
    for name in ("dedup_near", "decontaminate", "quality", "rejected/"):
        assert name in report
    s = curation_summary(m)
    assert s["documents_read"] == 20
    assert s["removed"]["dedup_exact"] == 1 and s["removed"]["decontaminate"] == 1
    assert s["documents_kept"] == s["train_documents"] + s["val_documents"]
    assert s["pii_replaced"]["EMAIL"] >= 1
    json.dumps(s)  # it goes into summary.json


def test_quickstart_corpus_survives_default_config(tmp_path: Path) -> None:
    """Code and documentation are content: the default config must keep most of the stdlib corpus."""
    paths = build_default_corpus(tmp_path, max_bytes=300_000)
    docs = [(json.loads(line)["text"], f"{p.name}:{i}") for p in paths for i, line in
            enumerate(p.read_text(encoding="utf-8").splitlines())]
    cfg = DataConfig()
    texts, _, meta = curate_chunk(docs, cfg)
    kept_bytes = sum(len(t.encode()) for t in texts)
    total = sum(len(t.encode()) for t, _ in docs)
    assert kept_bytes > 0.6 * total
    langs = set(meta["langs"])
    assert {"code", "en"} <= langs


@pytest.mark.slow  # starts a local Ray cluster (~10 s, ~0.5 GB); run with `make test-slow`
def test_ray_executor_matches_local(tmp_path: Path, curated) -> None:
    pytest.importorskip("ray")
    src = _corpus(tmp_path / "in.jsonl")
    cfg = {"vocab_size": 300, "val_fraction": 0.1, "chunk_chars": 800}
    local = prepare([src], tmp_path / "local", DataConfig(num_workers=1, **cfg), show_progress=False)
    ray = prepare([src], tmp_path / "ray", DataConfig(executor="ray", **cfg), show_progress=False)
    assert [s["sha256"] for s in ray["shards"]] == [s["sha256"] for s in local["shards"]]
    assert ray["stats"]["stages"] == local["stats"]["stages"]

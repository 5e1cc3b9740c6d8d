"""The pipeline report card: every section from the files a quickstart writes, offline, and in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diji.config import load_config
from diji.errors import DijiError
from diji.observe.card import collect, sparkline, write_card
from diji.train.checkpoint import latest_checkpoint
from diji.train.config import PretrainConfig
from diji.train.pretrain import pretrain
from testkit import tiny_overrides

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def fake_stage(runs: Path, name: str, parent_sha: str, metric: str) -> str:
    """A post-training run as the loop leaves it: metrics.jsonl and a checkpoint's lineage.json."""
    ckpt = runs / name / "checkpoints" / "step-000010"
    ckpt.mkdir(parents=True)
    with open(runs / name / "metrics.jsonl", "w") as f:
        for s in range(1, 11):
            f.write(json.dumps({"step": s, "loss": 2.0 - 0.1 * s, metric: 0.05 * s, "lr": 1e-3}) + "\n")
    (ckpt / "lineage.json").write_text(json.dumps({"stage": name, "step": 10, "tokens_seen": 12345,
                                                   "weights_sha256": f"{name}-weights-" + "a" * 40,
                                                   "parent_sha256": parent_sha, "data_manifest_sha256": None}))
    return str(ckpt.resolve())


@pytest.fixture(scope="module")
def pipeline(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    runs = root / "runs"
    pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, runs, "pretrain", steps=8)))
    base = latest_checkpoint(runs / "pretrain")
    base_sha = json.loads((base / "lineage.json").read_text())["weights_sha256"]
    sft = fake_stage(runs, "sft", base_sha, "val_accuracy")
    grpo = fake_stage(runs, "grpo", "sft-weights", "reward_mean")
    (root / "eval").mkdir()
    results = {t: {"task": t, "family": f, "main": m, "score": sc, "stderr": 0.01, "n": 50, "seconds": 1.5}
               for t, f, m, sc in (("ppl:data", "ppl", "bits_per_byte", 2.5), ("mc:cloze", "mc", "acc", 0.31),
                                   ("arith", "reasoning", "pass@1", 0.12))}
    (root / "eval" / "eval.json").write_text(json.dumps({"checkpoints": [{"path": grpo, "results": results}]}))
    stages = [{"name": "read", "docs_in": 100, "docs_out": 100, "dropped": {}},
              {"name": "quality", "docs_in": 100, "docs_out": 80, "dropped": {"too_short": 20}},
              {"name": "dedup", "docs_in": 80, "docs_out": 75, "dropped": {"exact": 5}}]
    summary = {
        "seconds": 42.0,
        "data": {"documents_read": 100, "bad_inputs": 0, "documents_kept": 75, "train_documents": 70,
                 "val_documents": 5, "train_tokens": 123456, "val_tokens": 7890, "removed": {}, "pii_replaced":
                 {"email": 3}, "stages": stages},
        "pretrain": {"checkpoint": str(base.resolve()), "val_loss": 3.1, "unigram_loss": 4.2},
        "sft": {"checkpoint": sft, "accuracy": 0.2},
        "grpo": {"checkpoint": grpo, "accuracy": 0.25,
                 "trend": {"think_share": {"first_third": 0.55, "last_third": 0.85},
                           "response_len": {"first_third": 16.4, "last_third": 23.6}}},
        "eval": {"ppl_bits_per_byte": 2.5},
        "reasoning": {"task": "arith_mix", "problems": 200, "samples_per_problem": 4,
                      "sft": {"greedy_accuracy": 0.155, "greedy_think_share": 0.0, "think_forced_accuracy": 0.36,
                              "direct_forced_accuracy": 0.155, "pass@4": 0.47},
                      "grpo": {"greedy_accuracy": 0.35, "greedy_think_share": 1.0, "think_forced_accuracy": 0.35,
                               "direct_forced_accuracy": 0.155, "pass@4": 0.61},
                      "grpo_reading": {"finding": "+19.5 points greedy: the model learned to reason first"}},
        "timings": {"data": 5.0, "pretrain": 20.0, "sft": 10.0, "grpo": 6.0, "eval": 1.0},
        "samples": {"pretrain": {"prompt": "def ", "text": "f(x): <return>"},
                    "chat": [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "7",
                              "sft": {"reply": "<think>3+4</think> 6", "correct": False},
                              "grpo": {"reply": "<think>3+4=7</think> 7", "correct": True}}]},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_card_shows_every_part_of_the_pipeline(pipeline):
    html_path, md_path = write_card(pipeline)
    page = html_path.read_text()
    for section in ("data", "curves", "eval", "before-after", "reasoning", "samples", "timings", "lineage"):
        assert f'<section id="{section}">' in page
    card = collect(pipeline)
    assert [s["name"] for s in card["stages"]] == ["pretrain", "sft", "grpo"]
    assert page.count("<svg") >= 3 * 3 + 3  # curves of three stages, data funnel, before/after, timings
    assert "val_loss (last" in page and "reward_mean (last" in page and "val_accuracy (last" in page
    assert "mc:cloze" in page and "0.3100" in page and "± 0.0100" in page
    assert "after SFT" in page and "after GRPO" in page and "unigram baseline" in page
    assert "f(x): &lt;return&gt;" in page  # samples are escaped
    assert "✓ correct" in page and "✗ wrong" in page
    lineage = json.loads((Path(card["stages"][0]["summary"]["checkpoint"]) / "lineage.json").read_text())
    assert lineage["weights_sha256"][:16] in page and lineage["data_manifest_sha256"][:16] in page
    assert "http" not in page and "<script" not in page  # offline: no external resource, no script
    md = md_path.read_text()
    assert "| mc:cloze | acc | 0.3100 |" in md and "## Lineage" in md and "(answer 7)" in md
    assert any(c in md for c in "▁▂▃▄▅▆▇█")
    # The reasoning probe: each measure per stage, and what the change consists of.
    assert "| accuracy, thinking forced | 36.0% | 35.0% |" in md and "| pass@4 (T = 1) | 47.0% | 61.0% |" in md
    assert "after GRPO: +19.5 points greedy: the model learned to reason first" in md
    assert "after GRPO rollouts, first → last third of the steps: think share 55% → 85%, response len 16.4 → 23.6 tokens" in md
    assert "accuracy, direct answer forced" in page and "learned to reason first" in page


def test_report_command_writes_the_card_and_refuses_other_folders(pipeline, tmp_path):
    out = subprocess.run([sys.executable, "-m", "diji", "report", str(pipeline), "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"html": str(pipeline / "report.html"), "markdown": str(pipeline / "report.md")}
    with pytest.raises(DijiError, match="no readable summary.json"):
        write_card(tmp_path)


def test_sparkline_spans_low_to_high():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(100)), width=24)) == 24 and sparkline([]) == ""


@pytest.mark.external
def test_card_renders_curves_and_eval_table_in_chromium_offline(pipeline, tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    image = pytest.importorskip("PIL.Image")
    html_path, _ = write_card(pipeline)
    shot = tmp_path / "card.png"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html_path.as_uri())
        page.screenshot(path=str(shot), full_page=True)
        boxes = {}
        for name, selector in (("curve", "#curves svg"), ("eval", "table.eval"), ("data", "#data svg"),
                               ("lineage", "#lineage table")):
            el = page.locator(selector).first
            assert el.is_visible(), name
            boxes[name] = el.bounding_box()
        polylines = page.locator("#curves svg polyline").count()
        eval_rows = page.locator("table.eval tbody tr").count()
        browser.close()
    assert all(r.startswith("file://") for r in requests), requests  # nothing but the page itself
    assert polylines >= 6 and eval_rows == 3
    img = image.open(shot).convert("RGB")
    for name, box in boxes.items():
        assert box["width"] > 100 and box["height"] > 40, (name, box)
        region = img.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"])))
        colors = region.getcolors(maxcolors=1 << 20) or []
        # not blank: many distinct colours (anti-aliased lines and text), and ink beyond the background
        ink = sum(n for n, (r, g, b) in colors if max(r, g, b) < 200)
        assert len(colors) > 20 and ink > 200, (name, len(colors), ink)
    # the curves are drawn in the chart colours (blue loss line), not only grey axes
    curve = img.crop((int(boxes["curve"]["x"]), int(boxes["curve"]["y"]),
                      int(boxes["curve"]["x"] + boxes["curve"]["width"]),
                      int(boxes["curve"]["y"] + boxes["curve"]["height"])))
    blue = sum(n for n, (r, g, b) in curve.getcolors(1 << 20) if b > 180 and r < 120 and g < 160)
    assert blue > 50, blue


def test_quickstart_records_samples_and_writes_its_card(data_dir, tmp_path):
    """The quickstart's own steps after training, on a tiny checkpoint (the full chain runs in CI)."""
    from diji.quickstart import CHAT_SAMPLES, Quickstart, run_quickstart

    result = pretrain(load_config(PretrainConfig, None, tiny_overrides(data_dir, tmp_path / "runs", "pretrain",
                                                                       steps=4) + ["model.max_position_embeddings=256"]))
    qs = Quickstart(tmp_path, fast=True, quiet=True)
    qs.summary["pretrain"] = {"checkpoint": result["checkpoint"], "val_loss": result["val_loss"], "unigram_loss": 6.0}
    qs.sample(result["checkpoint"])
    qs.chat_samples({"sft": result["checkpoint"], "grpo": result["checkpoint"]})
    qs.probe("sft", result["checkpoint"])
    qs.probe("grpo", result["checkpoint"])
    qs.timed("samples")
    samples = json.loads((tmp_path / "summary.json").read_text())["samples"]
    assert samples["pretrain"]["prompt"] == "def " and len(samples["chat"]) == CHAT_SAMPLES
    assert {"question", "answer", "sft", "grpo"} <= set(samples["chat"][0])
    reasoning = json.loads((tmp_path / "summary.json").read_text())["reasoning"]
    assert reasoning["problems"] == 50 and reasoning["sft"] == reasoning["grpo"]  # the same weights twice
    assert {"greedy_accuracy", "sampled_accuracy", "pass@4", "greedy_think_share", "think_forced_accuracy",
            "direct_forced_accuracy", "greedy_reply_tokens"} <= set(reasoning["sft"])
    assert reasoning["grpo_reading"]["gain_points"] == 0.0 and reasoning["grpo_reading"]["kind"] == "none"
    page = qs.card().read_text()
    assert "Held-out problems, greedy replies" in page and (tmp_path / "report.md").is_file()
    with pytest.raises(DijiError, match="already holds a quickstart; pass --overwrite"):
        run_quickstart(tmp_path)


def test_the_reading_of_a_gain_separates_choosing_to_think_from_thinking_better():
    from diji.quickstart import read_gain

    sft = {"greedy_accuracy": 0.15, "greedy_think_share": 0.0, "think_forced_accuracy": 0.36,
           "direct_forced_accuracy": 0.15}
    chose = read_gain(sft, {"greedy_accuracy": 0.35, "greedy_think_share": 1.0, "think_forced_accuracy": 0.35,
                            "direct_forced_accuracy": 0.16})
    assert chose["kind"] == "style selection" and chose["gain_points"] == 20.0
    assert "not better reasoning" in chose["finding"]
    better = read_gain(sft, {"greedy_accuracy": 0.25, "greedy_think_share": 0.0, "think_forced_accuracy": 0.5,
                             "direct_forced_accuracy": 0.25})
    assert better["kind"] == "style accuracy" and better["direct_forced_change_points"] == 10.0
    both = read_gain(sft, {"greedy_accuracy": 0.6, "greedy_think_share": 1.0, "think_forced_accuracy": 0.6,
                           "direct_forced_accuracy": 0.15})
    assert both["kind"] == "style selection and style accuracy"


def test_the_curve_trend_compares_the_first_and_last_third_of_the_steps():
    from diji.quickstart import curve_trend

    curve = [{"step": s, "accuracy": 0.1 * (s > 6), "think_share": s / 9, "response_len": 10.0} for s in range(1, 10)]
    trend = curve_trend(curve)
    assert trend["accuracy"] == {"first_third": 0.0, "last_third": 0.1}
    assert trend["think_share"] == {"first_third": round(2 / 9, 4), "last_third": round(8 / 9, 4)}
    assert trend["response_len"] == {"first_third": 10.0, "last_third": 10.0}
    assert curve_trend([{"step": 1, "accuracy": 0.5}]) == {}  # one point has no trend

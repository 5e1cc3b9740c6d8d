"""The report card of a whole pipeline (`diji report QUICKSTART_DIR`; the quickstart writes it at its end).

One self-contained page — `report.html`: inline SVG, inline CSS, no script, no font or CDN, so it opens
offline and can be mailed as one file — and its Markdown twin `report.md` for pasting into an issue
(tables, and curves as Unicode sparklines). Sections: data per curation stage, every stage's curves,
the evaluation table, before/after of SFT and GRPO, sample replies, timings, lineage hashes.

Everything is read from what the pipeline wrote: `summary.json` (DESIGN.md: seconds, data, pretrain,
sft, grpo, eval, and the quickstart's extensions `timings` and `samples`), `runs/*/metrics.jsonl`,
each checkpoint's `lineage.json` and `eval/eval.json`. A missing part is left out, not invented.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from diji.errors import DijiError
from diji.io import atomic_write_text
from diji.observe.metrics import read_metrics
from diji.observe.report import COLORS, curve_charts, numeric_series

STAGE_ORDER = ("pretrain", "sft", "grpo", "control")
REASONING_MEASURES = [
    ("greedy_accuracy", "greedy accuracy"), ("greedy_think_share", "greedy replies that think first"),
    ("sampled_accuracy", "sampled accuracy (T = 1)"), ("sampled_think_share", "sampled replies that think first"),
    ("pass@4", "pass@4 (T = 1)"), ("think_forced_accuracy", "accuracy, thinking forced"),
    ("direct_forced_accuracy", "accuracy, direct answer forced"), ("greedy_reply_tokens", "greedy reply tokens"),
]
REASONING_STAGES = (("sft", "after SFT"), ("grpo", "after GRPO"), ("control", "GRPO, first token frozen"))
SPARK = "▁▂▃▄▅▆▇█"


# ---- reading ------------------------------------------------------------------------------------------
def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def collect(qs_dir: Path) -> dict[str, Any]:
    """Everything the card shows, as plain data (the HTML and Markdown views render the same dict)."""
    summary = _json(qs_dir / "summary.json")
    if not isinstance(summary, dict):
        raise DijiError(f"{qs_dir} is not a pipeline directory (no readable summary.json); "
                        "run `diji quickstart --out DIR`, or `diji report RUN_DIR` for one run")
    stages = []
    for name in STAGE_ORDER:
        entry = summary.get(name)
        ckpt = Path(entry["checkpoint"]) if isinstance(entry, dict) and entry.get("checkpoint") else None
        run_dir = ckpt.parent.parent if ckpt else qs_dir / "runs" / name
        records = read_metrics(run_dir / "metrics.jsonl")
        if not records and entry is None:
            continue
        lineage = _json(ckpt / "lineage.json") if ckpt else None
        stages.append({"name": name, "summary": entry or {}, "records": records, "run_dir": str(run_dir),
                       "lineage": lineage or {}})
    evaluation = _json(qs_dir / "eval" / "eval.json")
    rows = []
    if isinstance(evaluation, dict) and evaluation.get("checkpoints"):
        for res in evaluation["checkpoints"][0]["results"].values():
            rows.append({"task": res["task"], "family": res.get("family", ""), "metric": res.get("main", ""),
                         "score": res["score"], "stderr": res.get("stderr"), "n": res.get("n"),
                         "seconds": res.get("seconds")})
    elif isinstance(summary.get("eval"), dict):
        rows = [{"task": k, "family": "", "metric": k, "score": v, "stderr": None, "n": None, "seconds": None}
                for k, v in summary["eval"].items()]
    return {"dir": str(qs_dir), "summary": summary, "stages": stages, "eval": rows,
            "samples": summary.get("samples", {}), "timings": summary.get("timings", {})}


def before_after(card: dict) -> list[tuple[str, str, float]]:
    """(what, stage, value) pairs a reader compares: base model vs its unigram baseline, SFT vs GRPO."""
    s = card["summary"]
    out = []
    pre = s.get("pretrain") or {}
    if "val_loss" in pre:
        out += [("val loss (nats/token, lower is better)", "unigram baseline", pre.get("unigram_loss")),
                ("val loss (nats/token, lower is better)", "after pretraining", pre["val_loss"])]
    for stage in ("sft", "grpo"):
        if "accuracy" in (s.get(stage) or {}):
            out.append(("held-out accuracy (higher is better)", f"after {stage.upper()}", s[stage]["accuracy"]))
    return [(w, st, float(v)) for w, st, v in out if v is not None]


def reasoning_table(card: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, findings) of the reasoning probe: each measure per post-training stage, and what the
    changes consist of (summary.reasoning, written by the quickstart)."""
    r = card["summary"].get("reasoning") or {}
    stages = [(k, label) for k, label in REASONING_STAGES if isinstance(r.get(k), dict)]
    if not stages:
        return [], [], []
    rows = []
    for key, label in REASONING_MEASURES:
        if any(key in r[k] for k, _ in stages):
            fmt = "{:.1f}" if key.endswith("tokens") else "{:.1%}"
            rows.append([label, *(fmt.format(r[k][key]) if key in r[k] else "" for k, _ in stages)])
    findings = [f"{label}: {r[f'{k}_reading']['finding']}" for k, label in stages if f"{k}_reading" in r]
    for k, label in stages:  # rollout metrics over the RL run (summary.grpo/control.trend)
        trend = (card["summary"].get(k) or {}).get("trend") or {}
        parts = [f"{name.replace('_', ' ')} " + (f"{v['first_third']:.1f} → {v['last_third']:.1f} tokens"
                 if name == "response_len" else f"{v['first_third']:.0%} → {v['last_third']:.0%}")
                 for name, v in trend.items()]
        if parts:
            findings.append(f"{label} rollouts, first → last third of the steps: " + ", ".join(parts))
    return ["measure", *(label for _, label in stages)], rows, findings


# ---- HTML ---------------------------------------------------------------------------------------------
def _esc(v: Any) -> str:
    return html.escape(str(v))


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def bar_chart(title: str, items: list[tuple[str, float]], w: int = 560, fmt: str = "{:,.0f}") -> str:
    """Horizontal bars, one per (label, value), scaled to the largest value."""
    if not items:
        return ""
    row, pad_l, top = 22, 170, 26
    h = top + row * len(items) + 8
    peak = max(v for _, v in items) or 1.0
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{_esc(title)}">',
             f'<text x="4" y="16" font-size="13" font-weight="600">{_esc(title)}</text>']
    for i, (label, v) in enumerate(items):
        y = top + i * row
        bw = max((w - pad_l - 80) * v / peak, 1.0)
        parts.append(f'<text x="{pad_l - 6}" y="{y + 14}" font-size="11" text-anchor="end">{_esc(label)}</text>')
        parts.append(f'<rect x="{pad_l}" y="{y + 3}" width="{bw:.1f}" height="{row - 8}" '
                     f'fill="{COLORS[i % len(COLORS)]}"/>')
        parts.append(f'<text x="{pad_l + bw + 4:.1f}" y="{y + 14}" font-size="11">{_esc(fmt.format(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _data_html(data: dict) -> str:
    if not data:
        return "<p>No data statistics recorded.</p>"
    funnel = [(st["name"], float(st["docs_out"])) for st in data.get("stages", [])]
    rows = [[st["name"], st["docs_in"], st["docs_out"], st["docs_in"] - st["docs_out"],
             ", ".join(f"{k} {v}" for k, v in (st.get("dropped") or {}).items())] for st in data.get("stages", [])]
    totals = _table(["documents read", "kept (train / val)", "tokens (train / val)", "PII replaced"], [[
        data.get("documents_read", ""), f"{data.get('train_documents', '')} / {data.get('val_documents', '')}",
        f"{data.get('train_tokens', 0):,} / {data.get('val_tokens', 0):,}",
        ", ".join(f"{k} {v}" for k, v in (data.get("pii_replaced") or {}).items()) or "none"]])
    return (totals + '<div class="charts">' + bar_chart("documents left after each stage", funnel) + "</div>"
            + _table(["stage", "documents in", "out", "removed", "why"], rows))


def _lineage_rows(card: dict) -> list[list[Any]]:
    rows = []
    for st in card["stages"]:
        lin = st["lineage"]
        rows.append([st["name"], lin.get("step", ""), f"{lin.get('tokens_seen', 0):,}",
                     str(lin.get("weights_sha256") or "")[:16], str(lin.get("data_manifest_sha256") or "-")[:16],
                     str(lin.get("parent_sha256") or "-")[:16]])
    return rows


def _timing_items(card: dict) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in card["timings"].items() if isinstance(v, (int, float))]


def _samples_html(samples: dict) -> str:
    parts = []
    pre = samples.get("pretrain")
    if pre:
        parts.append(f'<h3>Base model continues a prompt</h3><pre class="sample"><b>{_esc(pre["prompt"])}</b>'
                     f'{_esc(pre["text"])}</pre>')
    chats = samples.get("chat") or []
    if chats:
        rows = []
        for c in chats:
            rows.append("<tr>" + f"<td>{_esc(c['question'])}<br><small>answer: {_esc(c['answer'])}</small></td>"
                        + "".join(f'<td><pre class="sample">{_esc(c[k]["reply"])}</pre>'
                                  f'<small>{"✓ correct" if c[k]["correct"] else "✗ wrong"}</small></td>'
                                  for k in ("sft", "grpo") if k in c) + "</tr>")
        stages = [k.upper() for k in ("sft", "grpo") if k in chats[0]]
        head = "".join(f"<th>after {s}</th>" for s in stages)
        parts.append(f'<h3>Held-out problems, greedy replies</h3><table class="samples"><thead><tr>'
                     f"<th>problem</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts) or "<p>No samples recorded.</p>"


CSS = """body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1180px;color:#111;padding:0 1rem}
h1{margin-bottom:.2rem} .sub{color:#555;margin-top:0} .charts{display:flex;flex-wrap:wrap;gap:1rem;margin:.5rem 0}
svg{background:#fafafa;border:1px solid #e5e7eb} table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}
pre.sample{white-space:pre-wrap;max-width:440px;margin:0;font-size:12px;background:#f5f5f5;padding:.4rem}
section{margin-bottom:2rem} code{background:#f3f4f6;padding:0 .2rem}"""


def render_html(card: dict) -> str:
    s = card["summary"]
    curves = []
    for st in card["stages"]:
        charts = curve_charts(st["records"], 420, 200)
        curves.append(f'<h3>{_esc(st["name"])} <small>({len(st["records"])} logged steps, '
                      f'{_esc(st["run_dir"])})</small></h3><div class="charts">'
                      + ("".join(charts) or "<p>No metrics logged.</p>") + "</div>")
    ev = [[r["task"], r["family"], r["metric"], f"{r['score']:.4f}",
           "" if r["stderr"] is None else f"± {r['stderr']:.4f}", r["n"] or "", r["seconds"] or ""]
          for r in card["eval"]]
    ba = before_after(card)
    ba_charts = "".join(bar_chart(what, [(st, v) for w, st, v in ba if w == what], fmt="{:.4f}")
                        for what in dict.fromkeys(w for w, _, _ in ba))
    timings = _timing_items(card)
    r_head, r_rows, r_findings = reasoning_table(card)
    reasoning = (_table(r_head, r_rows) + "".join(f"<p>{_esc(f)}</p>" for f in r_findings)) if r_rows else \
        "<p>No reasoning probe recorded.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diji report card — {_esc(Path(card['dir']).name)}</title>
<style>{CSS}</style></head><body>
<h1>diji report card</h1>
<p class="sub">{_esc(card['dir'])} — whole pipeline in {s.get('seconds', '?')} s</p>
<section id="data"><h2>Data</h2>{_data_html(s.get('data') or {})}</section>
<section id="curves"><h2>Training curves</h2>{''.join(curves) or '<p>No training runs found.</p>'}</section>
<section id="eval"><h2>Evaluation of the final model</h2>
{_table(["task", "family", "metric", "score", "stderr", "items", "seconds"], ev, "eval") if ev else '<p>Not evaluated.</p>'}
</section>
<section id="before-after"><h2>Before and after</h2><div class="charts">{ba_charts or '<p>Nothing to compare.</p>'}</div>
{_table(["measure", "stage", "value"], [[w, st, f"{v:.4f}"] for w, st, v in ba]) if ba else ''}</section>
<section id="reasoning"><h2>Reasoning: what RL changed ({_esc((s.get('reasoning') or {}).get('problems', ''))}
held-out problems)</h2>{reasoning}</section>
<section id="samples"><h2>Sample replies</h2>{_samples_html(card['samples'])}</section>
<section id="timings"><h2>Timings</h2><div class="charts">{bar_chart("seconds per stage", timings, fmt="{:,.1f} s")}</div>
</section>
<section id="lineage"><h2>Lineage</h2>
{_table(["stage", "step", "tokens seen", "weights sha256", "data manifest sha256", "parent sha256"], _lineage_rows(card))}
<p>Full chain: <code>diji lineage CHECKPOINT</code>.</p></section>
</body></html>
"""


# ---- Markdown -----------------------------------------------------------------------------------------
def sparkline(values: list[float], width: int = 24) -> str:
    """Unicode block sparkline of at most `width` points (evenly subsampled)."""
    if not values:
        return ""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(SPARK[min(int((v - lo) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in values)


def _md_table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(card: dict) -> str:
    s = card["summary"]
    out = [f"# diji report card — `{Path(card['dir']).name}`", "", f"Whole pipeline in {s.get('seconds', '?')} s.", ""]
    data = s.get("data") or {}
    if data:
        out += ["## Data", "", f"{data.get('documents_read', '?')} documents read, "
                f"{data.get('train_documents', '?')} train / {data.get('val_documents', '?')} val kept, "
                f"{data.get('train_tokens', 0):,} / {data.get('val_tokens', 0):,} tokens.", "",
                _md_table(["stage", "in", "out", "removed"],
                          [[st["name"], st["docs_in"], st["docs_out"], st["docs_in"] - st["docs_out"]]
                           for st in data.get("stages", [])]), ""]
    out += ["## Training curves", ""]
    rows = []
    for st in card["stages"]:
        for key, series in numeric_series(st["records"]).items():
            if key in ("loss", "val_loss", "val_accuracy", "reward_mean", "accuracy"):
                vals = [v for _, v in series]
                rows.append([st["name"], key, f"{vals[0]:.4g}", sparkline(vals), f"{vals[-1]:.4g}"])
    out += [_md_table(["stage", "metric", "first", "curve", "last"], rows) if rows else "No metrics.", ""]
    if card["eval"]:
        out += ["## Evaluation", "", _md_table(["task", "metric", "score", "stderr", "items"], [
            [r["task"], r["metric"], f"{r['score']:.4f}", "" if r["stderr"] is None else f"{r['stderr']:.4f}",
             r["n"] or ""] for r in card["eval"]]), ""]
    ba = before_after(card)
    if ba:
        out += ["## Before and after", "", _md_table(["measure", "stage", "value"],
                                                     [[w, st, f"{v:.4f}"] for w, st, v in ba]), ""]
    r_head, r_rows, r_findings = reasoning_table(card)
    if r_rows:
        out += ["## Reasoning: what RL changed", "", _md_table(r_head, r_rows), "", *(f"- {f}" for f in r_findings), ""]
    samples = card["samples"]
    if samples.get("pretrain"):
        out += ["## Sample replies", "", "Base model:", "", "```", samples["pretrain"]["prompt"]
                + samples["pretrain"]["text"], "```", ""]
    for c in samples.get("chat") or []:
        out += [f"**{c['question']}** (answer {c['answer']})", ""]
        for k in ("sft", "grpo"):
            if k in c:
                out += [f"- after {k.upper()} ({'correct' if c[k]['correct'] else 'wrong'}): "
                        f"`{c[k]['reply'].strip()[:300].replace(chr(10), ' ').replace('`', chr(39))}`"]
        out.append("")
    if card["timings"]:
        out += ["## Timings", "", _md_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in _timing_items(card)]), ""]
    out += ["## Lineage", "", _md_table(["stage", "step", "tokens seen", "weights sha256", "data sha256",
                                          "parent sha256"], _lineage_rows(card)), ""]
    return "\n".join(out)


def write_card(qs_dir: str | Path) -> tuple[Path, Path]:
    """Write report.html and report.md into a pipeline directory; returns both paths."""
    qs_dir = Path(qs_dir)
    card = collect(qs_dir)
    html_path, md_path = qs_dir / "report.html", qs_dir / "report.md"
    atomic_write_text(html_path, render_html(card))
    atomic_write_text(md_path, render_markdown(card))
    return html_path, md_path

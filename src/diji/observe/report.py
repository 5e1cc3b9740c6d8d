"""report.html: a self-contained page (inline SVG, no scripts, no CDN) with a run's curves and config.

Every numeric series in metrics.jsonl gets a chart; related series share one (loss with val_loss,
reward with accuracy) so that over- or under-fitting is visible at a glance.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from diji.io import atomic_write_text
from diji.observe.metrics import read_metrics

# Series drawn together on one chart; anything else numeric gets a chart of its own.
GROUPS = [
    ("loss", ["loss", "val_loss"]),
    ("reward / accuracy", ["reward_mean", "accuracy", "val_accuracy"]),
    ("reply style (share of samples)", ["think_share", "think_correct"]),
    ("learning rate", ["lr"]),
    ("gradient norm", ["grad_norm"]),
    ("throughput (tokens/s)", ["tokens_per_s"]),
]
SKIP = {"step", "tokens_seen", "mfu"}
COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed"]


def svg_chart(title: str, series: dict[str, list[tuple[float, float]]], w: int = 560, h: int = 240) -> str:
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pad_l, pad_b, pad_t, pad_r = 56, 28, 24, 12

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (w - pad_l - pad_r)

    def sy(y: float) -> float:
        return h - pad_b - (y - y0) / (y1 - y0) * (h - pad_b - pad_t)

    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad_l}" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - pad_r}" y2="{h - pad_b}" stroke="#999"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{h - pad_b}" stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        parts.append(f'<text x="{pad_l - 4}" y="{sy(yv) + 4:.1f}" font-size="10" text-anchor="end">{yv:.4g}</text>')
        xv = x0 + frac * (x1 - x0)
        parts.append(f'<text x="{sx(xv):.1f}" y="{h - 10}" font-size="10" text-anchor="middle">{xv:.0f}</text>')
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>')
        if len(s) == 1:
            parts.append(f'<circle cx="{sx(s[0][0]):.1f}" cy="{sy(s[0][1]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{w - pad_r - 4}" y="{pad_t + 4 + 13 * i}" font-size="11" fill="{color}" '
                     f'text-anchor="end">{html.escape(name)} (last {s[-1][1]:.4g})</text>')
    parts.append("</svg>")
    return "".join(parts)


def numeric_series(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} for every numeric metric of a run except SKIP."""
    numeric: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        for k, v in r.items():
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            numeric.setdefault(k, []).append((float(r.get("step", 0)), float(v)))
    return numeric


def curve_charts(records: list[dict], w: int = 560, h: int = 240) -> list[str]:
    """One inline SVG per GROUPS entry present, then one per remaining metric."""
    numeric = numeric_series(records)
    charts, used = [], set()
    for title, keys in GROUPS:
        series = {k: numeric[k] for k in keys if k in numeric}
        if series:
            charts.append(svg_chart(title, series, w, h))
            used.update(series)
    for k in sorted(set(numeric) - used):
        charts.append(svg_chart(k, {k: numeric[k]}, w, h))
    return charts


def render_report(run_dir: Path) -> str:
    records = read_metrics(run_dir / "metrics.jsonl")
    charts = curve_charts(records)
    config = (run_dir / "config.toml").read_text(encoding="utf-8") if (run_dir / "config.toml").is_file() else ""
    last = records[-1] if records else {}
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in last.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>diji report — {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#111}}
.charts{{display:flex;flex-wrap:wrap;gap:1rem}} svg{{background:#fafafa;border:1px solid #e5e7eb}}
table{{border-collapse:collapse}} th,td{{padding:2px 10px;text-align:left;border-bottom:1px solid #eee}}
pre{{background:#f5f5f5;padding:1rem;overflow:auto}}</style></head><body>
<h1>diji run: {html.escape(run_dir.name)}</h1>
<p>{len(records)} logged steps.</p>
<h2>Curves</h2><div class="charts">{''.join(charts) or '<p>No metrics logged yet.</p>'}</div>
<h2>Last record</h2><table>{summary}</table>
<h2>Resolved config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    out = run_dir / "report.html"
    atomic_write_text(out, render_report(run_dir))
    return out

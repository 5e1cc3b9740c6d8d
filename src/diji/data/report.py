"""Human-readable views of a data manifest: `diji data report` (markdown) and the quickstart summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def curation_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """Per-stage counts of a data manifest, compact enough for the quickstart's summary.json `data` entry."""
    s = manifest["stats"]
    stages = s.get("stages", [])
    pii: dict[str, int] = {}
    for st in stages:
        if st["name"] == "pii":
            pii = dict(st.get("extra", {}))
    return {
        "documents_read": s["read"]["documents"],
        "bad_inputs": s["read"]["bad_total"],
        "documents_kept": s["documents"]["train"] + s["documents"]["val"],
        "train_documents": s["documents"]["train"],
        "val_documents": s["documents"]["val"],
        "train_tokens": s["tokens"]["train"],
        "val_tokens": s["tokens"]["val"],
        "removed": {st["name"]: st["docs_in"] - st["docs_out"] for st in stages if st["name"] != "read"},
        "pii_replaced": pii,
        "stages": [
            {"name": st["name"], "docs_in": st["docs_in"], "docs_out": st["docs_out"], "dropped": st["dropped"]}
            for st in stages
        ],
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def render_report(manifest: dict[str, Any], data_dir: Path) -> str:
    """A markdown page: inputs, bad input, each stage's documents/bytes in and out and why, shards."""
    s = manifest["stats"]
    read = s["read"]
    lines = [f"# Data report: {data_dir}", ""]
    total_tokens = s["tokens"]["train"] + s["tokens"]["val"]
    lines += [
        f"- documents: {read['documents']:,} read from {read['files']:,} files ({_mb(read['bytes'])} MB), "
        f"{s['documents']['train'] + s['documents']['val']:,} kept "
        f"({s['documents']['train']:,} train / {s['documents']['val']:,} val)",
        f"- tokens: {total_tokens:,} ({s['tokens']['train']:,} train / {s['tokens']['val']:,} val), "
        f"dtype {manifest['dtype']}, vocab {manifest['vocab_size']:,}, EOS id {manifest['eos_id']}",
        f"- tokenizer: sha256 {manifest['tokenizer_sha256'][:16]}…, "
        f"{'trained on the train split' if s.get('tokenizer', {}).get('trained') else 'given'}",
        "",
        "## Bad input",
        "",
    ]
    if read["bad_total"]:
        lines += ["| reason | count |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in read["bad"].items()]
        lines += ["", "First locations:", ""]
        lines += [f"- `{e}`" for e in read["bad_examples"]]
    else:
        lines.append("None.")
    lines += ["", "## Stages", "", "| stage | docs in | docs out | removed | MB in | MB out | why removed |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for st in s.get("stages", []):
        why = ", ".join(f"{k}: {v:,}" for k, v in sorted(st["dropped"].items(), key=lambda kv: -kv[1]) if v)
        lines.append(
            f"| {st['name']} | {st['docs_in']:,} | {st['docs_out']:,} | {st['docs_in'] - st['docs_out']:,} | "
            f"{_mb(st['bytes_in'])} | {_mb(st['bytes_out'])} | {why} |"
        )
    extras = [(st["name"], st["extra"]) for st in s.get("stages", []) if st.get("extra")]
    if extras:
        lines += ["", "## Other counts", ""]
        for name, extra in extras:
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:,}" for k, v in extra.items()))
    rejected = s.get("rejected_files", [])
    if rejected:
        lines += ["", "## Rejected samples", ""]
        lines += [f"- `{data_dir / 'rejected' / f}`" for f in rejected]
    lines += ["", "## Shards", "", "| file | split | tokens | sha256 |", "|---|---|---:|---|"]
    lines += [f"| {x['file']} | {x['split']} | {x['tokens']:,} | {x['sha256'][:16]}… |" for x in manifest["shards"]]
    lines += ["", "## Inputs", "", "| path | MB | sha256 |", "|---|---:|---|"]
    lines += [f"| {x['path']} | {_mb(x['bytes'])} | {x['sha256'][:16]}… |" for x in manifest["inputs"]]
    return "\n".join(lines) + "\n"

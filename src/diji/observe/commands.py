"""CLI: `diji report RUN_DIR | PIPELINE_DIR` and `diji lineage CKPT`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diji.errors import DijiError


def _report(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / "summary.json").is_file():  # a whole pipeline (the quickstart's --out)
        from diji.observe.card import write_card

        html_path, md_path = write_card(directory)
        print(json.dumps({"html": str(html_path), "markdown": str(md_path)}) if args.json else f"{html_path}\n{md_path}")
        return 0
    from diji.observe.report import write_report

    if not (directory / "metrics.jsonl").is_file():
        raise DijiError(f"{directory} is not a run directory (no metrics.jsonl) nor a pipeline directory "
                        "(no summary.json)")
    out = write_report(directory)
    print(json.dumps({"html": str(out)}) if args.json else out)
    return 0


def _parent_lineage(parent: object, child: Path | None) -> dict | None:
    """The parent's lineage.json as a dict; None when the parent is not on this disk (an imported or moved
    checkpoint: the chain just ends). lineage.json cannot hash itself, so a hand-edited one is checked."""
    if not isinstance(parent, str):
        raise DijiError(f"lineage.json of {child or 'a parent'}: 'parent' must be a checkpoint path, "
                        f"got {type(parent).__name__}")
    from diji.train.checkpoint import read_lineage

    if not Path(parent, "lineage.json").is_file():
        return None
    return read_lineage(parent)  # refuses invalid JSON and anything but a lineage object, in one line


def _lineage(args: argparse.Namespace) -> int:
    from diji.train.checkpoint import verify_checkpoint

    lineage = verify_checkpoint(args.checkpoint)
    chain = [lineage]
    parent = lineage.get("parent")
    while parent is not None and len(chain) < 32:  # the cap stops a lineage that loops back on itself
        parent = _parent_lineage(parent, Path(args.checkpoint) if len(chain) == 1 else None)
        if parent is None:
            break
        chain.append(parent)
        parent = parent.get("parent")
    for depth, item in enumerate(chain):
        print(f"{'  ' * depth}{item.get('stage', '?')} step {item.get('step')} weights {item.get('weights_sha256', '')[:12]} "
              f"data {str(item.get('data_manifest_sha256') or '-')[:12]} metrics {json.dumps(item.get('metrics', {}))}")
    if args.json:
        print(json.dumps(lineage, indent=2, ensure_ascii=False))
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="(re)write a run's report.html, or a pipeline's report card (html + md)")
    p.add_argument("dir", metavar="DIR", help="a run directory (runs/NAME) or a pipeline directory "
                   "(`diji quickstart --out DIR`: writes DIR/report.html and DIR/report.md)")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=_report)
    p = sub.add_parser("lineage", help="show which data, config and parent made a checkpoint")
    p.add_argument("checkpoint", help="checkpoint directory (with lineage.json)")
    p.add_argument("--json", action="store_true", help="also print the full lineage.json")
    p.set_defaults(func=_lineage)

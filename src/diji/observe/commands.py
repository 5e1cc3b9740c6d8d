"""CLI: `diji report RUN_DIR` and `diji lineage CKPT`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diji.errors import DijiError


def _report(args: argparse.Namespace) -> int:
    from diji.observe.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise DijiError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    print(write_report(run_dir))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from diji.train.checkpoint import verify_checkpoint

    lineage = verify_checkpoint(args.checkpoint)
    chain = [lineage]
    parent = lineage.get("parent")
    while parent and Path(parent, "lineage.json").is_file() and len(chain) < 32:
        chain.append(json.loads(Path(parent, "lineage.json").read_text()))
        parent = chain[-1].get("parent")
    for depth, item in enumerate(chain):
        print(f"{'  ' * depth}{item.get('stage', '?')} step {item.get('step')} weights {item.get('weights_sha256', '')[:12]} "
              f"data {str(item.get('data_manifest_sha256') or '-')[:12]} metrics {json.dumps(item.get('metrics', {}))}")
    if args.json:
        print(json.dumps(lineage, indent=2, ensure_ascii=False))
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="(re)write report.html for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=_report)
    p = sub.add_parser("lineage", help="show which data, config and parent made a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="also print the full lineage.json")
    p.set_defaults(func=_lineage)

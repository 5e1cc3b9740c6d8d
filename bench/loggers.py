"""Cost of each run.loggers back-end per logged step, against the jsonl baseline in the same process.

Prints one JSON line: seconds to open each logger, milliseconds per `log` of a 10-metric record, and the
ratio to jsonl. Needs the `track` extra.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from diji.observe.loggers import open_loggers

STEPS = 200
CONFIG = {"run": {"name": "bench", "seed": 1}, "train": {"max_steps": STEPS}, "optim": {"lr": 3e-3}}


def measure(name: str, root: Path) -> dict[str, float]:
    run_dir = root / name
    run_dir.mkdir()
    t0 = time.perf_counter()
    loggers = open_loggers([name], run_dir, CONFIG)
    t1 = time.perf_counter()
    for step in range(1, STEPS + 1):
        loggers.log(step, {f"m{i}": 1.0 / (step + i) for i in range(10)})
    t2 = time.perf_counter()
    loggers.close()
    return {"open_s": round(t1 - t0, 3), "ms_per_log": round((t2 - t1) / STEPS * 1e3, 3)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = measure("jsonl", root)
        out = {"bench": "loggers", "steps": STEPS, "jsonl": base}
        for name in ("tensorboard", "mlflow"):
            r = measure(name, root)  # includes jsonl, which is always on
            r["ratio_vs_jsonl"] = round(r["ms_per_log"] / max(base["ms_per_log"], 1e-9), 1)
            out[name] = r
    print(json.dumps(out))


if __name__ == "__main__":
    main()

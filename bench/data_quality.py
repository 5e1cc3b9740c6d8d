"""Quality filters on maths, code and prose: kept / dropped fractions with diji's maths rules vs without.

Inputs:
- the generated mixed zh/en corpus of tests/data/mixed_corpus.py (clean prose, clean worked maths
  solutions in English, Chinese and LaTeX, code, junk, near-duplicate families; labels known);
- GSM8K's train split from ../shared/data (if present): each `question` + `answer` is one clean maths
  document written by people — the kind of text the prose rules used to drop.

Both are curated in this process (normalise → langid → quality → dedup, the pipeline's own stages) once
with the default config and once with `quality.math_detect = false` (the prose rules only, the peer).
Prints one JSON line: clean kept, near-duplicate recall, junk dropped, GSM8K kept, and their ratios.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))

import mixed_corpus as M  # noqa: E402

from diji.data.curate import curate_chunk  # noqa: E402
from diji.data.filters import QualityConfig  # noqa: E402
from diji.data.prepare import DataConfig  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k_train.jsonl"


def gsm8k_kept(cfg: DataConfig) -> tuple[float, dict[str, int]]:
    rows = [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = [(f"{r['question']}\n{r['answer']}", str(i)) for i, r in enumerate(rows)]
    texts, _, meta = curate_chunk(docs, cfg)
    dropped = {k: v for st in meta["stages"] for k, v in st.get("dropped", {}).items()}
    return len(texts) / len(docs), dropped


def main() -> None:
    docs = M.generate(n_clean=1200, n_junk=240, n_families=80, seed=1)
    out: dict[str, object] = {"bench": "data_quality", "documents": len(docs)}
    for name, cfg in (("diji", DataConfig()), ("prose_rules_only", DataConfig(quality=QualityConfig(math_detect=False)))):
        t = time.perf_counter()
        s = M.score(docs, M.curate_ids(docs, cfg))
        out[name] = {"clean_kept": round(s.clean_kept, 4), "near_dup_recall": round(s.near_dup_recall, 4),
                     "junk_dropped": round(s.junk_dropped, 4), "by_kind": s.by_kind,
                     "seconds": round(time.perf_counter() - t, 2)}
        if GSM8K.is_file():
            kept, dropped = gsm8k_kept(cfg)
            out[name]["gsm8k_kept"] = round(kept, 4)  # type: ignore[index]
            out[name]["gsm8k_dropped_by"] = dropped  # type: ignore[index]
    d, p = out["diji"], out["prose_rules_only"]
    out["clean_kept_ratio"] = round(d["clean_kept"] / max(p["clean_kept"], 1e-9), 3)  # type: ignore[index]
    if GSM8K.is_file():
        out["gsm8k_kept_ratio"] = round(d["gsm8k_kept"] / max(p["gsm8k_kept"], 1e-9), 3)  # type: ignore[index]
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()

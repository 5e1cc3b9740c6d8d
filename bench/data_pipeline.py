"""Curation throughput and near-duplicate detection: diji vs HF datatrove, same input, one run.

Input (~`--mb` MB of JSONL, half English, half Chinese by bytes):
- English paragraphs from ../shared/data (Shakespeare, GSM8K) and the standard library's docstrings;
- Chinese sentences from this machine's zh_CN gettext catalogues (/usr/share/locale, vim), the only
  real Chinese prose an offline machine has;
- each document is a random mix of paragraphs/sentences with an `ID0000123` marker line, chosen so that
  it passes diji's quality filters (then every original reaches the dedup stage and recall measures
  dedup alone), plus 5 % junk (spam, fragments) that the quality filters must drop;
- 10 % injected near-duplicates: copies of an earlier document with 2 % of the tokens (English words,
  Chinese characters) substituted, deleted or inserted.

diji: `prepare()` with a tokenizer given (so no tokenizer training). `diji_mb_s` counts the stages
datatrove also runs — reading, filtering, dedup — during which diji also normalises, identifies the
language, applies C4 rules and scrubs PII; `diji_end_to_end_mb_s` adds tokenizing and writing shards.
datatrove (defaults, 2 tasks × 2 workers): reader → Gopher repetition + quality filters → writer, then
MinHash signature → buckets → cluster → filter (its 4-stage example). `cpu_ratio`: datatrove's CPU
seconds over diji's for the same stages (`cpu_ratio_end_to_end`: over diji's whole `prepare()`) —
unlike wall-clock ratios, robust to other load on a shared machine.

dup_recall: share of injected copies that are gone from diji's output; dup_false_positive_rate: share
of originals (documents never copied from anything) that are gone. The same two numbers for datatrove
are computed over the documents that survived its quality filters. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gettext
import glob
import json
import logging
import random
import re
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---- input ----------------------------------------------------------------------------------------------
def english_pool() -> list[str]:
    from diji.data.corpus import build_default_corpus

    paras: list[str] = []
    sh = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    paras += [p.strip() for p in sh.split("\n\n") if len(p.split()) >= 12]
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl"):
        for line in (SHARED / name).read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            paras.append(obj["question"])
            paras.append(re.sub(r"<<[^>]*>>", "", obj["answer"]).replace("####", "The answer is"))
    with tempfile.TemporaryDirectory() as d:
        docs_file = build_default_corpus(Path(d), max_bytes=4_000_000, docs_share=1.0)[0]
        for line in docs_file.read_text(encoding="utf-8").splitlines():
            paras += [p.strip() for p in json.loads(line)["text"].split("\n\n") if len(p.split()) >= 12]
    return paras


def chinese_pool() -> list[str]:
    out = set()
    files = glob.glob("/usr/share/locale/zh_CN/LC_MESSAGES/*.mo") + glob.glob("/usr/share/**/zh_CN*/LC_MESSAGES/*.mo", recursive=True)
    for f in sorted(set(files)):
        try:
            with open(f, "rb") as fh:
                cat = gettext.GNUTranslations(fh)._catalog  # the message table itself is what we want
        except Exception:  # a catalogue in another encoding or a damaged file: skip it
            continue
        for v in cat.values():
            if isinstance(v, str):
                v = re.sub(r"%\w|\{[^}]*\}|_|&", "", v).strip()
                if sum("\u4e00" <= c <= "\u9fff" for c in v) >= 6:
                    out.add(v.replace("\n", " "))
    if not out:
        raise SystemExit("no zh_CN message catalogues on this machine: cannot build the Chinese half")
    return sorted(out)


def edit(rng: random.Random, text: str, rate: float, chinese: bool) -> str:
    header, _, body = text.partition("\n")
    toks = list(body) if chinese else body.split(" ")
    pool = toks[:]
    for _ in range(max(1, int(len(toks) * rate))):
        i = rng.randrange(len(toks))
        op = rng.random()
        if op < 0.4:
            toks[i] = rng.choice(pool)
        elif op < 0.7:
            del toks[i]
        else:
            toks.insert(i, rng.choice(pool))
    return header + "\n" + ("".join(toks) if chinese else " ".join(toks))


def build_input(path: Path, total_mb: float, seed: int = 0) -> dict:
    from diji.data.curate import curate_chunk
    from diji.data.prepare import DataConfig

    rng = random.Random(seed)
    en, zh = english_pool(), chinese_pool()
    print(f"pools: {len(en)} English paragraphs, {len(zh)} Chinese sentences", file=sys.stderr)
    cfg = DataConfig()
    rows: list[dict] = []
    size = 0
    target = total_mb * 1e6
    originals: list[int] = []
    while size < target:
        i = len(rows)
        r = rng.random()
        chinese = rng.random() < 0.6  # Chinese documents are shorter in bytes: more of them for an even mix
        if r < 0.10 and originals:
            src = rows[rng.choice(originals)]
            text = edit(rng, src["text"].replace(src["marker"], f"ID{i:07d}"), 0.02, src["zh"])
            rows.append({"text": text, "id": i, "dup_of": src["id"], "zh": src["zh"], "marker": f"ID{i:07d}"})
        elif r < 0.15:
            junk = rng.choice(["buy now cheap deals " * 50, "ok", "点击领取 " * 80, "1 2 3 4 5 6 7 8 9 0 " * 40])
            rows.append({"text": f"ID{i:07d}\n{junk}", "id": i, "dup_of": None, "zh": False, "junk": True,
                         "marker": f"ID{i:07d}"})
        else:
            for _ in range(20):
                if chinese:
                    sents = rng.sample(zh, rng.randint(25, 45))
                    body = "".join(s + rng.choice("。，；！") for s in sents)
                else:
                    body = "\n\n".join(rng.sample(en, rng.randint(6, 14)))
                text = f"ID{i:07d}\n{body}"
                if curate_chunk([(text, "")], cfg)[0]:
                    break
            rows.append({"text": text, "id": i, "dup_of": None, "zh": chinese, "marker": f"ID{i:07d}"})
            originals.append(i)
        size += len(rows[-1]["text"].encode())
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "id": str(r["id"])}, ensure_ascii=False) + "\n")
    copied = {r["dup_of"] for r in rows if r["dup_of"] is not None}
    truth = {
        "copies": [r["id"] for r in rows if r["dup_of"] is not None],
        "dup_of": {r["id"]: r["dup_of"] for r in rows if r["dup_of"] is not None},
        "singletons": [r["id"] for r in rows if r["dup_of"] is None and not r.get("junk") and r["id"] not in copied],
        "zh": {r["id"] for r in rows if r["zh"]},
        "bytes": size,
    }
    zh_bytes = sum(len(r["text"].encode()) for r in rows if r["zh"])
    print(f"input: {len(rows)} documents, {size / 1e6:.1f} MB ({zh_bytes / size:.0%} Chinese), "
          f"{len(truth['copies'])} near-duplicates", file=sys.stderr)
    return truth


def score(kept: set[int], candidates: set[int], truth: dict) -> tuple[float, float, dict]:
    """Recall over copies whose original and copy both reached dedup; FPR over singletons that did."""
    copies = [c for c in truth["copies"] if c in candidates and truth["dup_of"][c] in candidates]
    singles = [s for s in truth["singletons"] if s in candidates]
    recall = sum(c not in kept for c in copies) / max(1, len(copies))
    fpr = sum(s not in kept for s in singles) / max(1, len(singles))
    zh = [c for c in copies if c in truth["zh"]]
    en = [c for c in copies if c not in truth["zh"]]
    per = {"recall_en": sum(c not in kept for c in en) / max(1, len(en)),
           "recall_zh": sum(c not in kept for c in zh) / max(1, len(zh)), "pairs": len(copies)}
    return recall, fpr, per


# ---- diji ------------------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (worker pools)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_diji(src: Path, work: Path, truth: dict) -> tuple[float, float, float, dict]:
    import numpy as np

    from diji.data.prepare import DataConfig, open_shards, prepare
    from diji.data.tokenizer import Tokenizer, train_tokenizer

    sample = [json.loads(line)["text"] for line in src.read_text(encoding="utf-8").splitlines()[:2000]]
    tok_path = train_tokenizer(sample, 8192, work / "tok", show_progress=False)
    logging.basicConfig(level=logging.INFO, format="  diji: %(message)s", stream=sys.stderr)
    t0, c0 = time.perf_counter(), cpu_seconds()
    timings: dict[str, float] = {}
    prepare([src], work / "diji", DataConfig(), tokenizer=tok_path, show_progress=False, timings=timings)
    total, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    # the stages datatrove also runs: reading, filtering and dedup (diji adds normalisation, language
    # id, C4 rules and PII scrubbing inside the same time); tokenizing and sharding are reported apart
    seconds = timings["curate"] + timings["dedup"]
    tok = Tokenizer.from_file(tok_path)
    text = "".join(tok.decode(np.concatenate(open_shards(work / "diji", s)).tolist()) for s in ("train", "val"))
    kept = {int(m) for m in re.findall(r"ID(\d{7})", text)}
    every = set(truth["copies"]) | set(truth["singletons"]) | set(truth["dup_of"].values())
    recall, fpr, per = score(kept, every, truth)  # by construction every original passes diji's filters
    per["cpu_seconds"] = round(cpu, 1)
    per["end_to_end_mb_s"] = round(truth["bytes"] / 1e6 / total, 2)
    per["timings"] = {k: round(v, 1) for k, v in timings.items()}
    return truth["bytes"] / 1e6 / seconds, recall, fpr, per


# ---- datatrove -------------------------------------------------------------------------------------------
def run_datatrove(src: Path, work: Path, truth: dict, tasks: int) -> tuple[float, float, float, dict]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    # split the input so that `tasks` tasks can read it in parallel
    inp = work / "dt_in"
    inp.mkdir(parents=True)
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    per = (len(lines) + tasks - 1) // tasks
    for t in range(tasks):
        (inp / f"part-{t}.jsonl").write_text("".join(lines[t * per : (t + 1) * per]), encoding="utf-8")
    # datatrove 0.10 hands str to xxhash, which xxhash 4.x refuses ("Strings must be encoded before
    # hashing"); encode on its behalf, and fork the workers so that they inherit the fix.
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)
    dt_xxhash.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)
    cfg = MinhashConfig()
    w = work / "dt"
    t0, c0 = time.perf_counter(), cpu_seconds()
    stages = [
        [JsonlReader(str(inp)), GopherRepetitionFilter(), GopherQualityFilter(), JsonlWriter(str(w / "filtered"))],
        [JsonlReader(str(w / "filtered")), MinhashDedupSignature(output_folder=str(w / "sigs"), config=cfg)],
        [MinhashDedupBuckets(input_folder=str(w / "sigs"), output_folder=str(w / "buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(w / "buckets"), output_folder=str(w / "remove"), config=cfg)],
        [JsonlReader(str(w / "filtered")), MinhashDedupFilter(input_folder=str(w / "remove")),
         JsonlWriter(str(w / "out"))],
    ]
    tasks_per = [tasks, tasks, cfg.num_buckets, 1, tasks]
    for i, (pipe, n) in enumerate(zip(stages, tasks_per, strict=True)):
        LocalPipelineExecutor(pipeline=pipe, tasks=n, workers=tasks, logging_dir=str(w / f"logs{i}"),
                              start_method="fork").run()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0

    def ids(folder: Path) -> set[int]:
        import gzip

        out = set()
        for f in folder.rglob("*.jsonl.gz"):
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                out.update(int(json.loads(line)["id"]) for line in fh)
        return out

    filtered, kept = ids(w / "filtered"), ids(w / "out")
    recall, fpr, per = score(kept, filtered, truth)
    per["kept_after_quality"] = len(filtered)
    per["cpu_seconds"] = round(cpu, 1)
    return truth["bytes"] / 1e6 / seconds, recall, fpr, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100.0, help="input size in MB")
    ap.add_argument("--tasks", type=int, default=2, help="datatrove tasks/workers (diji uses all cores)")
    ap.add_argument("--skip-peer", action="store_true", help="run diji only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        src = work / "input.jsonl"
        truth = build_input(src, args.mb)
        diji_mb_s, recall, fpr, per = run_diji(src, work, truth)
        print(f"diji: {diji_mb_s:.2f} MB/s, recall {recall:.3f} {per}, false positives {fpr:.4f}", file=sys.stderr)
        result = {"diji_mb_s": round(diji_mb_s, 2), "diji_end_to_end_mb_s": per["end_to_end_mb_s"]}
        if not args.skip_peer:
            peer_mb_s, p_recall, p_fpr, p_per = run_datatrove(src, work, truth, args.tasks)
            print(f"datatrove: {peer_mb_s:.2f} MB/s, recall {p_recall:.3f} {p_per}, false positives {p_fpr:.4f}",
                  file=sys.stderr)
            result.update({"peer_mb_s": round(peer_mb_s, 3), "ratio": round(diji_mb_s / peer_mb_s, 2),
                           # on a shared machine wall-clock ratios swing with the load; CPU seconds do
                           # not (diji's include tokenizing and writing shards, which datatrove skips)
                           "cpu_ratio": round(p_per["cpu_seconds"] / max(per["timings"]["curate_and_dedup_cpu"], 1e-9), 2),
                           "cpu_ratio_end_to_end": round(p_per["cpu_seconds"] / max(per["cpu_seconds"], 1e-9), 2)})
        result.update({"dup_recall": round(recall, 4), "dup_false_positive_rate": round(fpr, 4)})
        if not args.skip_peer:
            result.update({"peer_dup_recall": round(p_recall, 4), "peer_dup_false_positive_rate": round(p_fpr, 4)})
        print(json.dumps(result))


if __name__ == "__main__":
    main()

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diji.data.dedup import DedupConfig
from diji.data.filters import QualityConfig
from diji.data.prepare import DataConfig, load_manifest, open_shards, prepare, verify_shards
from diji.data.tokenizer import EOS_ID, Tokenizer
from diji.errors import DijiError


def _docs(n: int) -> list[str]:
    en = ["The river runs past the old mill and the children watch the boats go by.",
          "A careful engineer writes tests before she trusts a benchmark result.",
          "Rain fell all night; by morning the garden paths were soft and dark."]
    zh = ["春天来了，公园里的花都开了，孩子们在草地上奔跑。", "工程师在发布之前仔细检查了每一个测试结果。"]
    return [f"Document {i}. " + " ".join(en[(i + j) % 3] for j in range(4)) + zh[i % 2] for i in range(n)]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


# These tests are about reading, splitting and sharding: the documents are deliberately short and
# alike, so the quality filters and near-dup removal (tested in their own files) are off here.
MECHANICS = {"quality": QualityConfig(enabled=False), "dedup": DedupConfig(near=False)}
CFG = DataConfig(vocab_size=400, val_fraction=0.2, num_workers=1, chunk_chars=3000, **MECHANICS)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict]:
    root = tmp_path_factory.mktemp("prep")
    docs = _docs(60)
    src = _write_jsonl(root / "in.jsonl", docs)
    out = root / "out"
    manifest = prepare([src], out, CFG, show_progress=False)
    return out, docs, manifest


def test_manifest_fields(prepared: tuple[Path, list[str], dict]) -> None:
    out, docs, manifest = prepared
    assert load_manifest(out) == manifest
    assert set(manifest) >= {"format_version", "tokenizer_sha256", "dtype", "vocab_size", "eos_id", "shards",
                             "inputs", "config", "stats"}
    assert manifest["format_version"] == 1 and manifest["dtype"] == "uint16" and manifest["eos_id"] == EOS_ID
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    assert all(set(s) == {"split", "file", "tokens", "sha256"} for s in manifest["shards"])
    assert set(manifest["inputs"][0]) == {"path", "sha256", "bytes"}
    assert manifest["config"]["vocab_size"] == 400
    assert manifest["stats"]["read"]["documents"] == 60
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "manifest.json", "tokenizer.json", "train-00000.bin", "val-00000.bin"]
    assert not (out.parent / f".{out.name}.work").exists()  # scratch removed after success
    verify_shards(out)


def test_shards_decode_to_documents_plus_eos(prepared: tuple[Path, list[str], dict]) -> None:
    out, docs, manifest = prepared
    tok = Tokenizer.from_file(out)
    assert tok.sha256 == manifest["tokenizer_sha256"]
    decoded = []
    for split in ("train", "val"):
        ids = np.concatenate(open_shards(out, split))
        assert ids.dtype == np.dtype("<u2") and ids[-1] == EOS_ID
        text = tok.decode(ids.tolist())
        parts = text.split("<|endoftext|>")
        assert parts[-1] == ""
        decoded.append(parts[:-1])
    train, val = decoded
    assert len(val) == manifest["stats"]["documents"]["val"] > 0
    assert sorted(train + val) == sorted(docs)  # every document exactly once, in one split
    assert not set(train) & set(val)


def test_split_is_deterministic_and_content_based(tmp_path: Path, prepared: tuple[Path, list[str], dict]) -> None:
    out, docs, _ = prepared
    tok = Tokenizer.from_file(out)
    val_before = set(tok.decode(np.concatenate(open_shards(out, "val")).tolist()).split("<|endoftext|>")[:-1])
    # the same documents in another order, plus new ones, with the same tokenizer
    src = _write_jsonl(tmp_path / "in.jsonl", list(reversed(docs)) + [f"extra doc {i}" for i in range(5)])
    prepare([src], tmp_path / "o2", CFG, tokenizer=out / "tokenizer.json", show_progress=False)
    val_after = set(tok.decode(np.concatenate(open_shards(tmp_path / "o2", "val")).tolist()).split("<|endoftext|>")[:-1])
    assert val_before <= val_after


def test_rerun_is_byte_identical(tmp_path: Path, prepared: tuple[Path, list[str], dict]) -> None:
    out, docs, manifest = prepared
    src = _write_jsonl(tmp_path / "in.jsonl", docs)
    timings: dict[str, float] = {}
    again = prepare([src], tmp_path / "o", CFG, show_progress=False, timings=timings)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert again["tokenizer_sha256"] == manifest["tokenizer_sha256"]
    assert set(timings) == {"curate", "dedup", "tokenizer", "tokenize", "publish", "curate_and_dedup_cpu"}
    # the manifest is a function of the inputs alone (no timings, no paths of scratch files)
    assert {k: v for k, v in again.items() if k != "inputs"} == {k: v for k, v in manifest.items() if k != "inputs"}


def test_many_small_shards(tmp_path: Path, prepared: tuple[Path, list[str], dict]) -> None:
    out, docs, manifest = prepared
    src = _write_jsonl(tmp_path / "in.jsonl", docs)
    cfg = DataConfig(vocab_size=400, val_fraction=0.2, num_workers=1, chunk_chars=3000, shard_tokens=1000, **MECHANICS)
    m = prepare([src], tmp_path / "o", cfg, tokenizer=out, show_progress=False)
    train = [s for s in m["shards"] if s["split"] == "train"]
    assert len(train) > 2 and all(s["tokens"] == 1000 for s in train[:-1])
    whole = np.concatenate(open_shards(out, "train"))
    assert np.array_equal(np.concatenate(open_shards(tmp_path / "o", "train")), whole)


def test_verify_detects_corruption(tmp_path: Path, prepared: tuple[Path, list[str], dict]) -> None:
    import shutil

    out, _, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DijiError, match="sha256"):
        verify_shards(copy)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DijiError, match="truncated"):
        verify_shards(copy)
    with pytest.raises(DijiError, match="not a diji data directory"):
        load_manifest(tmp_path)


def test_bad_inputs_counted_not_fatal(tmp_path: Path) -> None:
    good = _write_jsonl(tmp_path / "good.jsonl", _docs(10))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine document here"}\n{broken\n{"text": "\xff\xfe"}\n{"title": "no text"}\n')
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02")
    m = prepare([good, bad, tmp_path / "binary.txt"], tmp_path / "o",
                DataConfig(vocab_size=300, num_workers=1, **MECHANICS), show_progress=False)
    read = m["stats"]["read"]
    assert read["documents"] == 11 and read["bad_total"] == 4
    assert read["bad"] == {"binary file": 1, "invalid UTF-8": 1, "malformed JSON": 1, "missing field 'text'": 1}


def test_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DijiError, match="input file not found"):
        prepare([tmp_path / "nope.jsonl"], tmp_path / "o", show_progress=False)
    src = _write_jsonl(tmp_path / "in.jsonl", _docs(3))
    with pytest.raises(DijiError, match="tokenizer file not found"):
        prepare([src], tmp_path / "o", tokenizer=tmp_path / "none.json", show_progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"other": "x"}\n')
    with pytest.raises(DijiError, match="no documents left") as e:
        prepare([empty], tmp_path / "o", show_progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("val_fraction", 0.9), ("vocab_size", 10), ("num_workers", -1), ("executor", "spark"), ("text_field", "")],
)
def test_config_validation(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})

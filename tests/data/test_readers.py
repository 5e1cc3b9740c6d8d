from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from diji.data import readers
from diji.data.readers import ReadStats, expand_inputs, iter_documents
from diji.errors import DijiError


def _read(paths: list[Path], field: str = "text") -> tuple[list[readers.Document], ReadStats]:
    stats = ReadStats()
    return list(iter_documents(paths, field, stats)), stats


def test_txt_is_one_document(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("第一段。\n\nsecond paragraph\n", encoding="utf-8")
    docs, stats = _read([p])
    assert [d.text for d in docs] == ["第一段。\n\nsecond paragraph\n"]
    assert (docs[0].source, docs[0].line) == (str(p), 1)
    assert stats.documents == 1 and stats.bad == {}


def test_large_txt_split_at_blank_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "TXT_DOC_MAX_BYTES", 100)
    paras = [f"paragraph {i} " + "中" * 10 for i in range(20)]
    text = "\n\n".join(paras)
    p = tmp_path / "big.txt"
    p.write_text(text, encoding="utf-8")
    docs, _ = _read([p])
    assert len(docs) > 1
    assert all(len(d.text.encode()) <= 100 for d in docs)
    assert "".join(d.text for d in docs) == text  # nothing lost, nothing duplicated
    assert docs[1].line > 1


def test_jsonl_field_and_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    lines = [
        json.dumps({"content": "good one"}),
        "{not json",
        json.dumps({"other": 1}),
        json.dumps({"content": 5}),
        json.dumps(["a list"]),
        "",
        json.dumps({"content": "好的"}, ensure_ascii=False),
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"content": "bad \xff utf8"}\n'
    p.write_bytes(raw)
    docs, stats = _read([p], field="content")
    assert [d.text for d in docs] == ["good one", "好的"]
    assert [d.line for d in docs] == [1, 7]
    assert stats.bad == {
        "malformed JSON": 1,
        "missing field 'content'": 1,
        "field 'content' is not a string": 1,
        "JSON line is not an object": 1,
        "invalid UTF-8": 1,
    }
    assert any(e.startswith(f"{p}:2") for e in stats.bad_examples)
    assert any(e.startswith(f"{p}:8") for e in stats.bad_examples)


def test_binary_and_invalid_utf8_txt(tmp_path: Path) -> None:
    (tmp_path / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    docs, stats = _read(sorted(tmp_path.iterdir()))
    assert docs == []
    assert stats.bad == {"binary file": 1, "invalid UTF-8": 1}
    assert stats.files == 2


def test_gzip_and_truncated_gzip(tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl.gz"
    with gzip.open(good, "wt", encoding="utf-8") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"document number {i} " * 20}) + "\n")
    data = good.read_bytes()
    bad = tmp_path / "b.jsonl.gz"
    bad.write_bytes(data[: len(data) // 2])
    docs, stats = _read([good, bad])
    assert sum(1 for d in docs if d.source == str(good)) == 50
    assert stats.bad.get("truncated or corrupt compressed file") == 1


def test_zstd(tmp_path: Path) -> None:
    zstd = pytest.importorskip("zstandard")
    p = tmp_path / "a.txt.zst"
    p.write_bytes(zstd.ZstdCompressor().compress("压缩的文本 compressed text".encode()))
    q = tmp_path / "b.jsonl.zst"
    q.write_bytes(zstd.ZstdCompressor().compress(b'{"text": "one"}\n{"text": "two"}\n'))
    docs, stats = _read([p, q])
    assert [d.text for d in docs] == ["压缩的文本 compressed text", "one", "two"]
    assert stats.bad == {}


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "中文"], "id": [1, 2, 3]}), p)
    docs, stats = _read([p])
    assert [d.text for d in docs] == ["alpha", "中文"]
    assert stats.bad == {"field 'text' is not a string": 1}
    docs, stats = _read([p], field="missing")
    assert docs == [] and stats.bad == {"missing column 'missing'": 1}


def test_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jsonl", "d/a.txt", "d/sub/c.txt.gz", "d/ignore.bin", "d/.hidden/x.txt", "e.txt"):
        q = tmp_path / name
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_text("x")
    got = expand_inputs([tmp_path / "d", str(tmp_path / "*.txt"), tmp_path / "e.txt"])
    rel = [p.relative_to(tmp_path).as_posix() for p in got]
    assert rel == ["d/a.txt", "d/b.jsonl", "d/sub/c.txt.gz", "e.txt"]  # sorted, hidden skipped, deduplicated
    with pytest.raises(DijiError, match="input file not found"):
        expand_inputs([tmp_path / "missing.txt"])
    with pytest.raises(DijiError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.nothing")])


def test_unknown_extensions_are_refused_not_read_as_text(tmp_path) -> None:
    import pytest as _pytest

    from diji.data.readers import expand_inputs
    from diji.errors import DijiError

    for name, want in (("a.json", "convert it to JSONL"), ("b.arrow", "convert it to JSONL"),
                       ("c.bin", "unknown extension '.bin'")):
        (tmp_path / name).write_text("[]")
        with _pytest.raises(DijiError, match=want):
            expand_inputs([tmp_path / name])
    (tmp_path / "m.py").write_text("x = 1\n")
    assert expand_inputs([tmp_path / "m.py"]) == [tmp_path / "m.py"]

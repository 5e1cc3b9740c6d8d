"""Readers: turn files, directories and globs of .txt / .jsonl / .parquet (optionally .gz / .zst) into documents.

Bad input never crashes the pipeline and is never silently dropped: every unreadable file, invalid
UTF-8 block, malformed JSON line or missing field is counted in `ReadStats` under a reason, with the
first few `file:line` locations kept so the report can point at them.

A `.txt` file is one document — a book chapter or a source file is a unit of meaning — unless it is
larger than `TXT_DOC_MAX_BYTES`; then it is split at blank lines into documents of at most that size,
so one huge file cannot become one giant document that no filter or dedup stage can handle.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from diji.errors import DijiError

TXT_DOC_MAX_BYTES = 1 << 20
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
# Source and markup files named explicitly are text documents too (a directory is searched only for
# TEXT_SUFFIXES, JSONL and parquet, so pointing at a source tree does not pull in every build script).
SOURCE_SUFFIXES = (".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".js", ".ts", ".go", ".rs", ".java", ".sh", ".rst",
                   ".tex", ".toml", ".yaml", ".yml", ".html", ".css", ".sql")
COMPRESSION_SUFFIXES = (".gz", ".zst")
MAX_BAD_EXAMPLES = 20


@dataclass(frozen=True)
class Document:
    """One document and where it came from (`line` is 1-based: JSONL line, parquet row, or txt block start)."""

    text: str
    source: str
    line: int


@dataclass
class ReadStats:
    """What the readers saw: files, documents and bytes read, and bad input by reason."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)

    def add_bad(self, reason: str, where: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1
        if len(self.bad_examples) < MAX_BAD_EXAMPLES:
            self.bad_examples.append(f"{where}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "bytes": self.bytes,
            "bad": dict(sorted(self.bad.items())),
            "bad_total": sum(self.bad.values()),
            "bad_examples": list(self.bad_examples),
        }


def file_kind(path: Path) -> tuple[str, str]:
    """(format, compression) from the file name; DijiError for an extension no reader handles.

    An unknown extension is never read as text: a `.json` array or an `.arrow` table read as one text
    document would go into the shards as JSON syntax or binary, silently.
    """
    suffixes = [s.lower() for s in path.suffixes]
    comp = ""
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        comp = suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in JSONL_SUFFIXES:
        return "jsonl", comp
    if last in PARQUET_SUFFIXES:
        return "parquet", comp
    if last in TEXT_SUFFIXES + SOURCE_SUFFIXES:
        return "txt", comp
    if last in (".json", ".arrow"):
        raise DijiError(f"{path}: '{last}' is not a pretraining input; convert it to JSONL (one object per line "
                        "with a 'text' field) or parquet. (`diji train sft` reads .json and .arrow records)")
    raise DijiError(f"{path}: unknown extension '{last or path.name}'; inputs must be .txt/.text/.md, "
                    ".jsonl/.ndjson or .parquet (optionally .gz/.zst); rename a plain-text file to .txt")


def _is_supported(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    return bool(suffixes) and suffixes[-1] in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories searched recursively for supported files, globs expanded; sorted and unique.

    A path that matches nothing is an error (a typo should not silently yield an empty corpus).
    """
    out: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_file():
            file_kind(p)  # an unreadable extension fails now, not after an hour of curation
            out.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _is_supported(q) and not _hidden(q, p))
            if not found:
                raise DijiError(f"input directory {p} contains no .txt/.jsonl/.parquet files (optionally .gz/.zst)")
            out.extend(found)
        elif glob.has_magic(s):
            found = sorted(Path(g) for g in glob.glob(os.path.expanduser(s), recursive=True) if Path(g).is_file())
            if not found:
                raise DijiError(f"input pattern {s!r} matches no files")
            for q in found:
                file_kind(q)
            out.extend(found)
        else:
            raise DijiError(f"input file not found: {s}")
    seen: set[Path] = set()
    unique = []
    for p in out:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(p)
    return unique


def _hidden(q: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in q.relative_to(root).parts)


def open_binary(path: Path, comp: str) -> IO[bytes]:
    if comp == ".gz":
        return gzip.open(path, "rb")
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DijiError(f"{path}: reading .zst needs the 'zstandard' package: pip install 'diji[data]'") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _split_blocks(data: bytes, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Split at blank lines into blocks ≤ max_bytes (a paragraph longer than that is cut at a newline or hard).

    Yields (1-based start line, block bytes).
    """
    paragraphs = data.split(b"\n\n")
    line = 1
    cur: list[bytes] = []
    cur_len = 0
    cur_line = 1
    for i, para in enumerate(paragraphs):
        piece = para if i == len(paragraphs) - 1 else para + b"\n\n"
        while len(piece) > max_bytes:  # a giant paragraph: flush, then cut it
            if cur:
                yield cur_line, b"".join(cur)
                cur, cur_len = [], 0
            cut = piece.rfind(b"\n", 0, max_bytes) + 1 or max_bytes
            # never cut inside a UTF-8 sequence: back off continuation bytes (10xxxxxx)
            while cut > 1 and cut < len(piece) and (piece[cut] & 0xC0) == 0x80:
                cut -= 1
            yield line, piece[:cut]
            line += piece[:cut].count(b"\n")
            piece = piece[cut:]
            cur_line = line
        if cur and cur_len + len(piece) > max_bytes:
            yield cur_line, b"".join(cur)
            cur, cur_len = [], 0
        if not cur:
            cur_line = line
        cur.append(piece)
        cur_len += len(piece)
        line += piece.count(b"\n")
    if cur:
        yield cur_line, b"".join(cur)


def _decode(raw: bytes, where: str, stats: ReadStats) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.add_bad("invalid UTF-8", f"{where} (byte {e.start})")
        return None


def _read_txt(path: Path, comp: str, stats: ReadStats) -> Iterator[Document]:
    with open_binary(path, comp) as f:
        data = f.read()
    stats.bytes += len(data)
    if b"\x00" in data[:65536]:
        # NUL bytes do not occur in text files; this is an image, archive or other binary
        stats.add_bad("binary file", f"{path}:1")
        return
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark is an encoding artefact, not content
    blocks = [(1, data)] if len(data) <= TXT_DOC_MAX_BYTES else list(_split_blocks(data, TXT_DOC_MAX_BYTES))
    for line, raw in blocks:
        text = _decode(raw, f"{path}:{line}", stats)
        if text is not None and text.strip():
            yield Document(text, str(path), line)


def _read_jsonl(path: Path, comp: str, field_name: str, stats: ReadStats) -> Iterator[Document]:
    with open_binary(path, comp) as f:
        reader = io.BufferedReader(f) if comp == ".zst" else f
        for lineno, raw in enumerate(reader, start=1):
            stats.bytes += len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            if b"\x00" in raw:
                stats.add_bad("binary data", where)
                continue
            line = _decode(raw, where, stats)
            if line is None:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                stats.add_bad("malformed JSON", f"{where} ({e.msg})")
                continue
            if not isinstance(obj, dict):
                stats.add_bad("JSON line is not an object", where)
                continue
            if field_name not in obj:
                stats.add_bad(f"missing field '{field_name}'", where)
                continue
            text = obj[field_name]
            if not isinstance(text, str):
                stats.add_bad(f"field '{field_name}' is not a string", where)
                continue
            if text.strip():
                yield Document(text, str(path), lineno)


def _read_parquet(path: Path, field_name: str, stats: ReadStats) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DijiError(f"{path}: reading .parquet needs the 'pyarrow' package: pip install 'diji[data]'") from None
    stats.bytes += path.stat().st_size
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file; all mean "not parquet"
        stats.add_bad("unreadable parquet file", f"{path}:1 ({type(e).__name__})")
        return
    if field_name not in pf.schema_arrow.names:
        stats.add_bad(f"missing column '{field_name}'", f"{path}:1")
        return
    row = 0
    for batch in pf.iter_batches(columns=[field_name], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                stats.add_bad(f"field '{field_name}' is not a string", f"{path}:{row}")
            elif value.strip():
                yield Document(value, str(path), row)


def iter_documents(
    paths: Iterable[Path], text_field: str = "text", stats: ReadStats | None = None
) -> Iterator[Document]:
    """Yield the documents of `paths` in order, counting bad input in `stats`."""
    stats = stats if stats is not None else ReadStats()
    for path in paths:
        fmt, comp = file_kind(path)
        stats.files += 1
        before = stats.documents
        try:
            if fmt == "jsonl":
                docs = _read_jsonl(path, comp, text_field, stats)
            elif fmt == "parquet":
                docs = _read_parquet(path, text_field, stats)
            else:
                docs = _read_txt(path, comp, stats)
            for doc in docs:
                stats.documents += 1
                yield doc
        except DijiError:
            raise
        except (OSError, EOFError, ValueError) as e:
            # truncated .gz/.zst, permission denied, a file removed while reading: keep what was read
            kind = "truncated or corrupt compressed file" if comp else "unreadable file"
            stats.add_bad(kind, f"{path} (after {stats.documents - before} documents; {type(e).__name__}: {e})")
        except Exception as e:  # zstandard raises its own ZstdError; same treatment as above
            if comp and type(e).__name__ == "ZstdError":
                stats.add_bad("truncated or corrupt compressed file", f"{path} (after {stats.documents - before} documents; {e})")
            else:
                raise

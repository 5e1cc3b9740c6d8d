"""Fine-tuning data intake: the record formats and containers people publish SFT data in → messages.

Formats (detected from the first record, printed by the caller, the same for every record of a file):
- `messages`: OpenAI chat records, `{"messages": [{"role", "content"}, ...]}`; a content given as a list
  of parts (`[{"type": "text", "text": ...}]`) is joined;
- `sharegpt`: `{"conversations": [{"from": "human"|"gpt"|"system"|"tool"|..., "value": ...}]}` (also
  role/content keys, and an optional top-level `system`); tool, function and observation turns become
  the `tool` role, a `function_call` turn is the assistant's;
- `alpaca`: `{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant], ...]}`;
- `prompt_response`: `{"prompt", "response"|"completion"|"output", "system"?}`.

Containers: JSONL (`.jsonl`, `.ndjson`), JSON (`.json`: an array of records, or JSONL saved as .json),
parquet, CSV/TSV (a cell holding a JSON list, e.g. `messages`, is parsed), Arrow IPC (`.arrow`), and
`datasets.save_to_disk` folders (arrow stream files listed in `state.json`, next to
`dataset_info.json`; a DatasetDict folder uses its `train` split) — read with pyarrow, no `datasets`.

Anything else: an explicit column mapping, `columns = ["prompt=question", "response=answer"]`, renames
the file's columns to the canonical names above before detection.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diji.data.chat import validate_messages
from diji.errors import DijiError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_response")
CANONICAL_FIELDS = ("messages", "conversations", "instruction", "input", "output", "history", "system",
                    "prompt", "response")

# sharegpt speaker names seen in the wild (FastChat, LLaMA-Factory, ShareGPT dumps, Glaive, ToolBench)
_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool",
    "ipython": "tool", "tool_response": "tool",
}
_RESPONSE_KEYS = ("response", "completion", "output")


@dataclass(frozen=True)
class Intake:
    """What was read: the conversations, the detected format, the container and the file it came from."""

    conversations: list[list[dict[str, str]]]
    format: str
    container: str
    source: str

    def describe(self) -> str:
        return f"{self.source}: {len(self.conversations)} records, format {self.format} ({self.container})"


# ---- containers ----------------------------------------------------------------------------------------
def _is_save_to_disk(p: Path) -> bool:
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """(records as dicts, container name) from a file or a `save_to_disk` folder; DijiError on anything else."""
    p = Path(path)
    if _is_save_to_disk(p):
        return _read_save_to_disk(p), "datasets save_to_disk folder"
    if p.is_dir():
        raise DijiError(f"{p} is a folder but not a `datasets.save_to_disk` folder (no state.json or "
                        "dataset_dict.json); give a .jsonl, .json, .parquet, .csv or .arrow file")
    if not p.is_file():
        raise DijiError(f"SFT data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p), "JSONL"
    if suffix == ".json":
        return _read_json(p)
    if suffix == ".parquet":
        return _read_table(p, "parquet"), "parquet"
    if suffix in (".csv", ".tsv"):
        return _read_csv(p, "\t" if suffix == ".tsv" else ","), suffix[1:].upper()
    if suffix == ".arrow":
        return _read_table(p, "arrow"), "arrow"
    raise DijiError(f"{p}: unknown SFT data extension '{p.suffix}'; use .jsonl, .json, .parquet, .csv, .tsv, "
                    ".arrow or a `datasets.save_to_disk` folder")


def _text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DijiError(f"{p} is not UTF-8 text") from None


def _read_jsonl(p: Path, text: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate((_text(p) if text is None else text).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DijiError(f"{p}:{n}: not valid JSON ({e.msg})") from None
    return rows


def _read_json(p: Path) -> tuple[list[dict[str, Any]], str]:
    text = _text(p)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{") and e.msg == "Extra data":
            return _read_jsonl(p, text), "JSONL (named .json)"  # one object per line, saved as .json
        raise DijiError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if "messages" in obj or "conversations" in obj or not lists:
            obj = [obj]  # a single record
        elif len(lists) == 1:
            return obj[lists[0]], f"JSON object, records under '{lists[0]}'"
        else:
            raise DijiError(f"{p}: a JSON object with several record lists ({', '.join(lists)}); "
                            "give a JSON array of records")
    if not isinstance(obj, list):
        raise DijiError(f"{p}: expected a JSON array of records, got {type(obj).__name__}")
    return obj, "JSON array"


def _read_table(p: Path, kind: str) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError:
        raise DijiError(f"{p}: reading {kind} needs the 'pyarrow' package: pip install 'diji[data]'") from None
    try:
        if kind == "parquet":
            table = pq.read_table(p)
        else:
            # save_to_disk writes the IPC *stream* format; other tools write the IPC *file* format
            with pa.memory_map(str(p)) as src:
                try:
                    table = ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DijiError(f"{p}: not a readable {kind} file ({e})") from None
    return table.to_pylist()


def _read_save_to_disk(p: Path) -> list[dict[str, Any]]:
    if (p / "dataset_dict.json").is_file():
        splits = json.loads(_text(p / "dataset_dict.json")).get("splits", [])
        if "train" not in splits:
            raise DijiError(f"{p} is a DatasetDict without a 'train' split (splits: {', '.join(splits)}); "
                            "give the split's folder")
        p = p / "train"
    state = json.loads(_text(p / "state.json"))
    files = [f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise DijiError(f"{p}/state.json lists no data files")
    rows: list[dict[str, Any]] = []
    for name in files:
        if not (p / name).is_file():
            raise DijiError(f"{p / name} listed in state.json is missing")
        rows += _read_table(p / name, "arrow")
    return rows


def _read_csv(p: Path, delimiter: str) -> list[dict[str, Any]]:
    with open(p, encoding="utf-8", newline="") as f:
        try:
            return list(csv.DictReader(f, delimiter=delimiter))
        except (UnicodeDecodeError, csv.Error) as e:
            raise DijiError(f"{p}: not a readable CSV file ({e})") from None


def _parse_nested(row: Any) -> Any:
    """Nested fields stored as JSON text (the only way a CSV cell can hold them) → lists."""
    if not isinstance(row, dict):
        return row
    for k in ("messages", "conversations", "history"):
        v = row.get(k)
        if isinstance(v, str) and v.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                row[k] = json.loads(v)
    return row


# ---- formats ---------------------------------------------------------------------------------------------
def parse_columns(columns: Iterable[str]) -> dict[str, str]:
    """["prompt=question", ...] → {"question": "prompt"} (file column → canonical field)."""
    out = {}
    for item in columns:
        canon, sep, col = item.partition("=")
        canon, col = canon.strip(), col.strip()
        if not sep or not canon or not col:
            raise DijiError(f"data.columns entry {item!r} must look like 'field=column', e.g. 'prompt=question'")
        if canon not in CANONICAL_FIELDS:
            raise DijiError(f"data.columns: unknown field {canon!r}; fields: {', '.join(CANONICAL_FIELDS)}")
        out[col] = canon
    return out


def detect_format(record: Any) -> str | None:
    """The format a record is in, or None."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        return "messages"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        return "alpaca"
    if isinstance(record.get("prompt"), str) and any(isinstance(record.get(k), str) for k in _RESPONSE_KEYS):
        return "prompt_response"
    return None


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text", "") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        return "".join(p for p in parts if isinstance(p, str))
    if value is None:
        return ""
    raise ValueError(f"{where} must be a string, got {type(value).__name__}")


def _from_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] needs 'role' and 'content'")
        out.append({"role": str(m["role"]), "content": _content(m.get("content"), f"messages[{i}].content")})
    return out


def _from_sharegpt(record: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    if isinstance(record.get("system"), str) and record["system"]:
        out.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict):
            raise ValueError(f"conversations[{i}] must be an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        role = _SHAREGPT_ROLES.get(str(speaker).lower()) if speaker is not None else None
        if role is None:
            raise ValueError(f"conversations[{i}].from is {speaker!r}; known speakers: "
                             f"{', '.join(sorted(_SHAREGPT_ROLES))}")
        out.append({"role": role, "content": _content(turn.get("value", turn.get("content")),
                                                      f"conversations[{i}].value")})
    return out


def _from_alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    if isinstance(record.get("system"), str) and record["system"]:
        out.append({"role": "system", "content": record["system"]})
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"history[{i}] must be a [user, assistant] pair of strings")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    extra = record.get("input")
    prompt = record["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    return out + [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def _from_prompt_response(record: dict[str, Any]) -> list[dict[str, str]]:
    response = next(record[k] for k in _RESPONSE_KEYS if isinstance(record.get(k), str))
    out = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": response}]
    if isinstance(record.get("system"), str) and record["system"]:
        out.insert(0, {"role": "system", "content": record["system"]})
    return out


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
               "prompt_response": _from_prompt_response}


def conversation_from_record(record: Any, fmt: str = "auto", require_assistant: bool = True) -> list[dict[str, str]]:
    """One record in any of FORMATS → messages; ValueError naming what is wrong."""
    found = detect_format(record)
    if found is None:
        fields = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"record matches no SFT format (fields found: {fields}); expected 'messages', "
                         "'conversations' (sharegpt), 'instruction'+'output' (alpaca) or 'prompt'+'response'; "
                         "map other columns with data.columns, e.g. [\"prompt=question\", \"response=answer\"]")
    if fmt not in ("auto", found):
        raise ValueError(f"record is in format {found}, but the file's format is {fmt}")
    messages = _CONVERTERS[found](record)
    if not messages:
        raise ValueError("record holds no turns")
    validate_messages(messages)  # the roles and contents the renderer accepts, checked at intake
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError("record has no assistant turn, so nothing to learn from")
    return messages


def load_conversations(path: str | Path, fmt: str = "auto", columns: Iterable[str] = ()) -> Intake:
    """Read `path` (any container above), rename mapped columns, detect the format and convert every record.

    With `fmt="auto"` each record's format is detected (a file may mix them); otherwise every record
    must be in `fmt`.
    Errors name the file and the record number (1-based).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DijiError(f"data.format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
    rename = parse_columns(columns)
    rows, container = read_rows(path)
    if not rows:
        raise DijiError(f"{path} holds no records")
    if rename:
        rows = [{rename.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in rows]
    rows = [_parse_nested(r) for r in rows]
    if fmt == "auto" and detect_format(rows[0]) is None:
        first = rows[0]
        fields = ", ".join(sorted(map(str, first))) if isinstance(first, dict) else type(first).__name__
        raise DijiError(
            f"{path}: matches no SFT format (fields found: {fields}); expected 'messages', 'conversations' "
            "(sharegpt), 'instruction'+'output' (alpaca) or 'prompt'+'response' — map other columns with "
            "data.columns, e.g. --set 'data.columns=[\"prompt=question\",\"response=answer\"]'")
    convs = []
    seen: dict[str, None] = {}
    for n, r in enumerate(rows, 1):
        try:
            convs.append(conversation_from_record(r, fmt))
        except ValueError as e:
            raise DijiError(f"{path}: record {n}: {e}") from None
        seen[detect_format(r) or ""] = None
    # with format auto a file may mix formats (e.g. messages and prompt/response records); say so
    return Intake(convs, "+".join(seen), container, str(path))

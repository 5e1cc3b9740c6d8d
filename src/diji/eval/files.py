"""Reading task files: JSON Lines, one item per line, checked field by field.

A bad file stops evaluation before any model runs, with one line that names the file, the line number,
the field and what was expected — never a traceback, never a silently skipped item (a skipped item
changes the denominator and makes scores incomparable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diji.errors import DijiError
from diji.io import sha256_file


def read_jsonl(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """(line number, object) for every non-blank line, and the file's sha256."""
    p = Path(path)
    if not p.is_file():
        raise DijiError(f"task file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DijiError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DijiError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DijiError(f"{p}:{n}: each line must be a JSON object, got {type(obj).__name__}")
        rows.append((n, obj))
    if not rows:
        raise DijiError(f"{p}: the task file has no items")
    return rows, sha256_file(p)


def typed_field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[name], checked to be of `kind` (bool never counts as int); raises DijiError naming it."""
    if name not in obj:
        raise DijiError(f"{where}: missing field '{name}'")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise DijiError(f"{where}: field '{name}' must be {names}, got {_describe(value)}")
    return value


def nonempty_str(obj: dict[str, Any], name: str, where: str) -> str:
    value = typed_field(obj, name, str, where)
    if not value.strip():
        raise DijiError(f"{where}: field '{name}' is empty")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object", float: "a number"}


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    kind = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
    return f"{kind} {text[:40]}{'…' if len(text) > 40 else ''}"

"""The audit log: one JSON object per line in `DIR/audit-YYYY-MM-DD-NNNN.jsonl` (UTC dates).

Records are of two types. `"request"`: request id, hashed key id, endpoint, model, start time and
latency, time to first token, prompt/completion token counts, finish reasons, status and the policy
decisions; the prompt messages and output text only when the policy says `log_text = true`, and then
PII-redacted. `"feedback"`: a rating (+1/-1) for a response id, with an optional PII-redacted comment.
`diji data flywheel` (see `diji.serve.flywheel`) joins the two to export well-rated conversations.

Lines are appended and flushed one at a time (a crash loses at most the line being written, and
readers skip a torn last line). A file that reaches `max_file_bytes` is closed and the next one
(NNNN + 1) started; beyond `keep_files` files the oldest are deleted. Raw API keys and client
addresses are never written: a key id is a sha256 prefix salted with a secret drawn when the server
starts (per run), so ids link the records of one run but not across runs or to a known key's hash.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import secrets
import threading
from pathlib import Path
from typing import Any

from diji.safety.pii import redact

AUDIT_GLOB = "audit-*.jsonl"
_PART = re.compile(r"audit-(\d{4}-\d{2}-\d{2})(?:-(\d+))?\.jsonl$")
log = logging.getLogger(__name__)


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def key_id(secret: str, salt: bytes = b"") -> str:
    """A non-reversible id for an API key or client address; with a per-run `salt` it cannot be linked
    to the same key's id in another run."""
    return hashlib.sha256(b"diji-audit-v1:" + salt + b":" + secret.encode("utf-8")).hexdigest()[:16]


def scrub(value: Any) -> Any:
    """PII-redact every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)[0]
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    return value


class AuditLog:
    """Appends records; a disabled log (no directory) accepts and drops them."""

    def __init__(self, directory: str | Path | None, log_text: bool = False, max_file_bytes: int = 64 << 20,
                 keep_files: int = 100) -> None:
        self.dir = Path(directory) if directory else None
        self.log_text = log_text
        self.max_file_bytes, self.keep_files = max_file_bytes, keep_files
        self._lock = threading.Lock()
        self._file = None
        self._day = ""
        self._size = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _parts(self) -> list[Path]:
        """Audit files oldest first (by day, then part number; an unnumbered file is part 0)."""
        found = []
        for p in self.dir.glob(AUDIT_GLOB):
            m = _PART.match(p.name)
            if m:
                found.append(((m.group(1), int(m.group(2) or 0)), p))
        return [p for _, p in sorted(found)]

    def _open(self, day: str) -> None:
        if self._file is not None:
            self._file.close()
        nums = [int(m.group(2) or 0) for p in self._parts() if (m := _PART.match(p.name)) and m.group(1) == day]
        path = self.dir / f"audit-{day}-{(max(nums) + 1) if nums else 0:04d}.jsonl"
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
        self._day, self._size = day, path.stat().st_size
        if self.keep_files:
            for old in self._parts()[: -self.keep_files]:
                try:
                    old.unlink()
                except OSError as e:
                    log.warning("could not delete old audit file %s: %s", old, e)

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def write(self, record: dict[str, Any]) -> None:
        if self.dir is None:
            return
        now = _dt.datetime.now(_dt.timezone.utc)
        record = {"ts": now.isoformat(timespec="milliseconds"), **record}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            day = now.strftime("%Y-%m-%d")
            if day != self._day or self._file is None or self._size >= self.max_file_bytes:
                self._open(day)
            self._file.write(line)
            self._file.flush()
            self._size += len(line.encode("utf-8"))

    def request(self, **fields: Any) -> None:
        """Log a finished request; text fields are kept only with log_text and always PII-redacted."""
        text_fields = ("messages", "prompt", "output")
        rec = {"type": "request", **{k: v for k, v in fields.items() if k not in text_fields}}
        if self.log_text:
            rec.update({k: scrub(fields[k]) for k in text_fields if fields.get(k) is not None})
        self.write(rec)

    def feedback(self, response_id: str, rating: int, comment: str, key: str) -> None:
        self.write({"type": "feedback", "id": response_id, "rating": rating, "comment": scrub(comment),
                    "key_id": key})

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_audit(directory: str | Path) -> list[dict[str, Any]]:
    """Every record in the audit directory, oldest file first; a torn or non-JSON line is skipped."""
    out = []
    parts = []
    for p in Path(directory).glob(AUDIT_GLOB):
        m = _PART.match(p.name)
        parts.append(((m.group(1), int(m.group(2) or 0)) if m else (p.name, 0), p))
    for _, path in sorted(parts):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    return out

"""The feedback flywheel: well-rated conversations from the audit log → SFT data (`diji data flywheel`).

A served chat request is logged with its messages and reply (only when the policy has
`audit.log_text = true`, and PII-redacted); a thumbs-up on the chat page is logged as feedback for the
response id. This joins the two and writes `{"messages": [..., {"role": "assistant", ...}]}` lines —
the format `diji train sft` reads. A conversation is exported when its latest rating is at least
`min_rating`, it finished for an allowed reason (by default only "stop": a reply cut by max_tokens or
by the content filter is not an example to imitate), and the same conversation was not exported yet.
A vote counts only when it comes from the key (or client) the response was made for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from diji.errors import DijiError
from diji.io import atomic_open
from diji.safety.audit import AUDIT_GLOB, read_audit, scrub


@dataclass
class FlywheelStats:
    requests: int = 0
    """Chat requests found in the audit log."""
    rated: int = 0
    """Of those, how many have feedback."""
    exported: int = 0
    """Conversations written."""
    skipped_rating: int = 0
    """Rated below min_rating."""
    skipped_no_text: int = 0
    """Rated well but logged without text (audit.log_text was off)."""
    skipped_finish: int = 0
    """Rated well but finished for a reason not in finish_reasons."""
    duplicates: int = 0
    """Identical conversations already written."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def export_flywheel(audit_dir: str | Path, out: str | Path, min_rating: int = 1,
                    finish_reasons: tuple[str, ...] = ("stop",)) -> FlywheelStats:
    """Write well-rated chat conversations from `audit_dir` to the JSONL file `out` (atomically)."""
    audit_dir = Path(audit_dir)
    if not audit_dir.is_dir() or not any(audit_dir.glob(AUDIT_GLOB)):
        raise DijiError(f"{audit_dir} holds no audit-*.jsonl files; serve with a policy that sets audit.dir")
    records = read_audit(audit_dir)
    chats = {r["id"]: r for r in records
             if r.get("type") == "request" and r.get("endpoint") == "chat" and isinstance(r.get("id"), str)}
    ratings: dict[str, int] = {}
    for r in records:  # files and lines are in time order: the latest vote wins
        if r.get("type") == "feedback" and r.get("id") in chats and r.get("rating") in (1, -1):
            owner = chats[r["id"]].get("key_id")
            if owner is not None and r.get("key_id") != owner:
                continue  # only the caller who got the reply may rate it (the server checks this too)
            ratings[r["id"]] = r["rating"]
    stats = FlywheelStats(requests=len(chats), rated=len(ratings))
    seen: set[str] = set()
    lines = []
    for rid, rating in ratings.items():
        rec = chats[rid]
        if rating < min_rating:
            stats.skipped_rating += 1
            continue
        messages, output = rec.get("messages"), rec.get("output")
        if not isinstance(messages, list) or not isinstance(output, list) or not output or not isinstance(output[0], str):
            stats.skipped_no_text += 1
            continue
        if (rec.get("finish_reasons") or [None])[0] not in finish_reasons:
            stats.skipped_finish += 1
            continue
        # Redacted again on the way out: logs written by an older policy may predate redaction.
        convo = scrub([*messages, {"role": "assistant", "content": output[0]}])
        line = json.dumps({"messages": convo, "source": {"response_id": rid, "rating": rating}},
                          ensure_ascii=False)
        key = json.dumps(convo, ensure_ascii=False, sort_keys=True)
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        lines.append(line)
    with atomic_open(out, "w") as f:
        for line in lines:
            f.write(line + "\n")
    stats.exported = len(lines)
    return stats

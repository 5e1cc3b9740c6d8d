"""Per-stage statistics: documents and bytes in and out, and why documents were dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    """Counts for one stage; merged across chunks by `merge_stage_dicts`."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": dict(sorted(self.dropped.items())),
            **({"extra": dict(sorted(self.extra.items()))} if self.extra else {}),
        }


def merge_stage_dicts(per_chunk: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum the stage lists of many chunks, keeping the stage order of the first."""
    order: list[str] = []
    total: dict[str, dict[str, Any]] = {}
    for stages in per_chunk:
        for s in stages:
            name = s["name"]
            if name not in total:
                order.append(name)
                total[name] = {"name": name, "docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "dropped": {}}
            t = total[name]
            for k in ("docs_in", "docs_out", "bytes_in", "bytes_out"):
                t[k] += s[k]
            for k, v in s.get("dropped", {}).items():
                t["dropped"][k] = t["dropped"].get(k, 0) + v
            for k, v in s.get("extra", {}).items():
                t.setdefault("extra", {})
                t["extra"][k] = t["extra"].get(k, 0) + v
    for t in total.values():
        t["dropped"] = dict(sorted(t["dropped"].items()))
        if "extra" in t:
            t["extra"] = dict(sorted(t["extra"].items()))
    return [total[n] for n in order]

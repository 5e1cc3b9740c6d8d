"""Run-time fallbacks: every time diji takes a slower or different path than asked, it says so once.

Ports to new accelerators fail quietly — an op silently runs on the CPU, a dtype is emulated, a fused
kernel is missing. Each such event is recorded here with its reason: logged the first time it happens,
counted every time, and the counts go into metrics.jsonl (`fallbacks`) so a slow run explains itself.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

log = logging.getLogger("diji.fallback")


class FallbackRecorder:
    """Counts fallbacks by key; logs each key's reason the first time it is seen."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, key: str, reason: str) -> None:
        with self._lock:
            first = key not in self._reasons
            self._counts[key] += 1
            if first:
                self._reasons[key] = reason
        if first:
            log.warning("fallback %s: %s", key, reason)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._reasons.clear()


# One recorder per process: fallbacks happen deep inside kernels, far from any object that could carry it.
FALLBACKS = FallbackRecorder()

"""Run the curation stage on a Ray cluster (`executor = "ray"`, extra `dist`).

The same pure `curate_chunk` runs as Ray tasks; results come back to the driver, which writes the
scratch chunks exactly as the local executor does — so a Ray run needs no shared file system, resumes
the same way, and produces byte-identical shards. `ray.init()` joins the cluster named by
`RAY_ADDRESS` when it is set and otherwise starts a local one (which is how the tests exercise it).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diji.data.chunks import save_chunk
from diji.data.curate import curate_chunk
from diji.errors import DijiError


def _curate(docs: list[tuple[str, str]], cfg: Any, ctx: Any) -> tuple[list[str], dict, dict]:
    return curate_chunk(docs, cfg, ctx)


def run_ray(todo: Iterator[tuple[int, list[tuple[str, str]], Path]], cfg: Any, ctx: Any, bar: Any) -> None:
    """Curate every pending chunk as a Ray task, at most two per cluster CPU in flight."""
    try:
        import ray
    except ImportError:
        raise DijiError("executor = 'ray' needs the 'ray' package: pip install 'diji[dist]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(_curate)
        cfg_ref, ctx_ref = ray.put(cfg), ray.put(ctx)
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: collections.deque[tuple[Any, Path, int]] = collections.deque()

        def drain_one() -> None:
            ref, path, n = pending.popleft()
            texts, arrays, meta = ray.get(ref)
            save_chunk(path, texts, arrays, meta)
            bar.update(n)

        for _, docs, path in todo:
            pending.append((task.remote(docs, cfg_ref, ctx_ref), path, len(docs)))
            while len(pending) >= window:
                drain_one()
        while pending:
            drain_one()
    finally:
        if started:
            ray.shutdown()

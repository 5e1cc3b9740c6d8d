"""Kill `prepare` with SIGKILL at several points; rerunning gives byte-identical output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diji.data.chunks import load_chunk
from diji.data.prepare import DataConfig, prepare
from diji.io import sha256_file

# A child process that runs prepare() and SIGKILLs itself in the middle of the N-th write into
# `stage` ('curate' or 'tokens': half of a scratch file written) or just before publishing.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    import diji.data.prepare as P

    src, out, stage, n, cfg_json = sys.argv[1:6]
    n = int(n)
    count = 0
    real_savez = np.savez

    def savez(f, **kw):
        global count
        path = os.readlink(f"/proc/self/fd/{f.fileno()}")  # atomic_open's file has only an fd
        if os.path.basename(os.path.dirname(path)) == stage:
            count += 1
            if count == n:
                f.write(b"PK half-written")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_savez(f, **kw)

    np.savez = savez
    if stage == "publish":
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        P.publish_dir = die
    from diji.config import from_dict
    cfg = from_dict(P.DataConfig, json.loads(cfg_json))
    P.prepare([src], out, cfg, show_progress=False)
    """
)

CFG = {"vocab_size": 300, "num_workers": 1, "chunk_chars": 1500, "val_fraction": 0.1}


def _corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["the", "river", "and", "the", "ferry", "carried", "children", "with", "bread", "to", "the", "market", "while", "teachers", "in", "the", "village", "wrote", "letters", "about", "winter", "and", "summer", "for", "the", "station", "near", "the", "harbour"]
    zh = "我们村子坐落在一条大河的旁边，村里的大多数人家世世代代都靠这条河生活。每到春天，山上的积雪融化。"
    lines = []
    for i in range(60):
        body = " ".join(rng.choice(words, size=120).tolist())
        text = f"Story {i}. {body}." if i % 3 else f"{zh}{i}{zh[::-1]}"
        lines.append(json.dumps({"text": text}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _shards(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("resume")
    src = _corpus(root / "in.jsonl")
    out = root / "ref"
    prepare([src], out, DataConfig(**CFG), show_progress=False)
    return src, _shards(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
@pytest.mark.parametrize(("stage", "n"), [("curate", 3), ("tokens", 2), ("publish", 1)])
def test_kill_and_resume_is_byte_identical(stage: str, n: int, tmp_path: Path, reference) -> None:
    src, want = reference
    out = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(out), stage, str(n), json.dumps(CFG)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr  # it really died by SIGKILL
    assert not out.exists()  # nothing was published
    work = tmp_path / ".data.work"
    # every visible scratch file is complete; the half-written one is a hidden temporary
    visible = [p for p in work.rglob("chunk-*.npz")]
    assert visible and all(load_chunk(p) is not None for p in visible)
    assert any(p.name.startswith(".") and p.name.endswith(".tmp") for p in work.rglob("*")) or stage == "publish"

    prepare([src], out, DataConfig(**CFG), show_progress=False)
    assert _shards(out) == want
    assert not work.exists()


def test_changed_config_starts_afresh(tmp_path: Path, reference) -> None:
    src, want = reference
    work = tmp_path / ".data.work"
    (work / "curate").mkdir(parents=True)
    (work / "fingerprint.json").write_text('{"fingerprint": "from another command"}')
    (work / "curate" / "chunk-000000.npz").write_bytes(b"stale")
    prepare([src], tmp_path / "data", DataConfig(**CFG), show_progress=False)
    assert _shards(tmp_path / "data") == want

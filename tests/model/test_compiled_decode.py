"""The opt-in compiled decode step (DIJI_KERNELS=decode:compiled) gives the reference decode's greedy tokens,
recompiles when the frozen weights changed, and falls back to the eager packed step when it cannot compile."""

import pytest
import torch
from test_packed_decode import tiny, tokens  # the same tiny models and decode helper

from diji.compute.fallback import FALLBACKS
from diji.kernels.registry import REGISTRY
from diji.model import generate as gen
from diji.model.generate import compiled_decode_stats

needs_cxx = pytest.mark.skipif(gen._cxx_compiler() is None, reason="Inductor's C++ backend needs a C++ compiler")


@needs_cxx
def test_compiled_decode_matches_reference():
    m = tiny(bias=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    ref = tokens(m, prompts, "reference", n=12)
    assert tokens(m, prompts, "compiled", n=12) == ref
    stats = compiled_decode_stats(m)
    assert stats["graphs"] == 1 and stats["failed"] is None and stats["compile_s"] > 0
    assert tokens(m, prompts, "compiled", n=12) == ref  # the same graph again: no second compile
    # Another batch size, prompt length and cache length: batch and lengths are symbolic, still one graph.
    other = [[3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 7, 7]]
    assert tokens(m, other, "compiled", n=20) == tokens(m, other, "reference", n=20)
    assert compiled_decode_stats(m)["graphs"] == 1


def test_compiled_decode_keeps_every_thread(monkeypatch):
    monkeypatch.delenv(gen.DECODE_THREADS_ENV, raising=False)
    m = tiny()
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with REGISTRY.forced({"decode": "packed"}):
            assert gen.decode_threads(m, 1) == 1  # a small eager step: one thread
        with REGISTRY.forced({"decode": "compiled"}):
            assert gen.decode_threads(m, 1) == 2
    finally:
        torch.set_num_threads(saved)


@needs_cxx
@pytest.mark.slow
def test_compiled_decode_ragged_batch1_and_updated_weights():
    m = tiny(tie=False)
    ragged = [[5, 6], [9, 10, 11, 12, 13], [4]]
    assert tokens(m, ragged, "compiled") == tokens(m, ragged, "reference")
    prompts = [[3, 4, 5]]
    assert tokens(m, prompts, "compiled") == tokens(m, prompts, "reference")
    with torch.no_grad():  # an in-place update, as an optimizer step: the frozen constants are stale now
        for p in m.parameters():
            p.mul_(1.5)
    assert tokens(m, prompts, "compiled") == tokens(m, prompts, "reference")


def test_compile_failure_falls_back_to_packed(monkeypatch):
    def broken(*args, **kwargs):
        def fn(*a, **k):
            raise RuntimeError("simulated Inductor failure")
        return fn

    monkeypatch.setattr(gen.torch, "compile", broken)
    monkeypatch.setattr(gen, "_cxx_compiler", lambda: "c++")
    m = tiny()
    prompts = [[5, 6, 7]]
    assert tokens(m, prompts, "compiled") == tokens(m, prompts, "reference")
    assert "simulated Inductor failure" in compiled_decode_stats(m)["failed"]
    assert FALLBACKS.counts().get("kernel:decode:compiled:cpu", 0) >= 1
    assert tokens(m, prompts, "compiled") == tokens(m, prompts, "packed")  # no retry, still correct


def test_no_compiler_falls_back_to_packed(monkeypatch):
    monkeypatch.setattr(gen, "_cxx_compiler", lambda: None)
    m = tiny()
    prompts = [[5, 6, 7], [1, 2, 3]]
    assert tokens(m, prompts, "compiled") == tokens(m, prompts, "reference")
    assert "no C++ compiler" in compiled_decode_stats(m)["failed"]

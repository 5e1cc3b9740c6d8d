"""Capability profile of a device: what it can actually do, probed by running tiny ops on it.

A port to a new accelerator fails in predictable ways — no float64 on some NPUs, bf16 emulated or
missing, no fused attention kernel, `torch.compile` unavailable. Instead of a vendor table we *probe*:
each capability is a few-millisecond experiment, and each answer carries the reason (the exception or
the measurement), which `diji doctor` prints and the kernel registry uses to choose implementations.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch

from diji.compute.backends import backend_for, load_plugins

PROBE_DTYPES = ("float64", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Probe:
    ok: bool
    """Whether the capability works here."""
    why: str
    """The evidence: what was run and what happened."""


@dataclass(frozen=True)
class Capabilities:
    device: str
    """The device string probed, e.g. 'cpu' or 'cuda:0'."""
    device_type: str
    """torch device type."""
    dist_backend: str
    """torch.distributed back-end for this device type."""
    dtypes: dict[str, Probe]
    """Per dtype name: can we allocate, add and matmul in it with sane results."""
    autocast: dict[str, Probe]
    """Per low-precision dtype: does torch.autocast work on this device type."""
    fused_attention: Probe
    """Does scaled_dot_product_attention pick a fused (flash / memory-efficient) kernel here."""
    fused_adamw: Probe
    """Does torch.optim.AdamW(fused=True) run on this device."""
    compile: Probe
    """Does torch.compile work (only probed on request: inductor costs 30-70 s on the first call on a CPU)."""
    memory_bytes: int
    """Total memory of the device (host RAM for the CPU); 0 when unknown."""
    cpu_capability: str = ""
    """SIMD level torch dispatches to on the CPU (e.g. AVX512), '' on accelerators."""
    extra: dict[str, str] = field(default_factory=dict)
    """Versions of torch and any device plugin loaded."""

    def supports(self, dtype: torch.dtype | str) -> bool:
        name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        probe = self.dtypes.get(name)
        return bool(probe and probe.ok)

    def to_dict(self) -> dict:
        return asdict(self)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def probe_dtype(device: torch.device, name: str) -> Probe:
    """Allocate, add and matmul a small matrix in `name`; compare with a float32 CPU result."""
    dtype = getattr(torch, name)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(16, 16, generator=gen)
        b = torch.randn(16, 16, generator=gen)
        got = ((a.to(device, dtype) @ b.to(device, dtype)) + 1).float().cpu()
        want = a @ b + 1
        err = float((got - want).abs().max() / want.abs().max())
    except Exception as e:
        return Probe(False, _first_line(e))
    # Relative error far above the dtype's own epsilon means the op ran but the result is wrong
    # (some back-ends silently compute in a lower precision).
    tol = {"float64": 1e-6, "float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}[name]
    if not err <= tol:
        return Probe(False, f"matmul relative error {err:.2e} > {tol:.0e}")
    return Probe(True, f"matmul relative error {err:.1e}")


def probe_autocast(device: torch.device, name: str) -> Probe:
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device.type):
        return Probe(False, f"torch has no autocast for '{device.type}'")
    try:
        x = torch.randn(8, 8, device=device)
        with torch.autocast(device_type=device.type, dtype=getattr(torch, name)):
            y = x @ x
        if y.dtype != getattr(torch, name):
            return Probe(False, f"autocast matmul produced {y.dtype}")
    except Exception as e:
        return Probe(False, _first_line(e))
    return Probe(True, "autocast matmul ran in " + name)


def probe_fused_attention(device: torch.device) -> Probe:
    """Ask torch which SDPA back-end it would pick for a causal float32 problem (private but stable API)."""
    choose = getattr(torch, "_fused_sdp_choice", None)
    try:
        q = torch.randn(1, 2, 16, 32, device=device)
        if choose is None:
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            return Probe(False, "sdpa runs; this torch cannot tell which kernel it picked")
        from torch.nn.attention import SDPBackend

        picked = SDPBackend(choose(q, q, q, None, 0.0, True))
    except Exception as e:
        return Probe(False, _first_line(e))
    fused = picked not in (SDPBackend.MATH, SDPBackend.ERROR)
    return Probe(fused, f"sdpa picks {picked.name}")


def probe_fused_adamw(device: torch.device) -> Probe:
    try:
        p = torch.nn.Parameter(torch.ones(4, device=device))
        p.grad = torch.ones(4, device=device)
        torch.optim.AdamW([p], lr=0.1, fused=True).step()
        if not bool(torch.isfinite(p).all()):
            return Probe(False, "fused AdamW produced non-finite values")
    except Exception as e:
        return Probe(False, _first_line(e))
    return Probe(True, "AdamW(fused=True) stepped")


def probe_compile(device: torch.device) -> Probe:
    try:
        fn = torch.compile(lambda x: torch.nn.functional.silu(x) * x, dynamic=False)
        x = torch.randn(8, device=device)
        if not torch.allclose(fn(x), torch.nn.functional.silu(x) * x, atol=1e-5):
            return Probe(False, "compiled result differs from eager")
    except Exception as e:
        return Probe(False, _first_line(e))
    return Probe(True, "torch.compile (inductor) ran and matched eager")


def device_memory(device: torch.device) -> int:
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 0
    acc = getattr(torch, "accelerator", None)
    try:
        if acc is not None and hasattr(acc, "get_memory_info"):
            return int(acc.get_memory_info(device)[1])
        mod = getattr(torch, device.type)
        return int(mod.get_device_properties(device).total_memory)
    except Exception:
        return 0


@lru_cache(maxsize=16)
def _profile(device_str: str, with_compile: bool) -> Capabilities:
    plugins = load_plugins()
    device = torch.device(device_str)
    dtypes = {name: probe_dtype(device, name) for name in PROBE_DTYPES}
    casts = {name: probe_autocast(device, name) for name in ("bfloat16", "float16")}
    comp = probe_compile(device) if with_compile else Probe(False, "not probed (diji doctor --compile probes it)")
    extra = {"torch": torch.__version__, "python": platform.python_version(), **plugins}
    cpu_cap = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else ""
    return Capabilities(
        device=device_str, device_type=device.type, dist_backend=backend_for(device.type).dist_backend,
        dtypes=dtypes, autocast=casts, fused_attention=probe_fused_attention(device),
        fused_adamw=probe_fused_adamw(device), compile=comp, memory_bytes=device_memory(device),
        cpu_capability=cpu_cap, extra=extra,
    )


def capabilities(device: torch.device | str = "cpu", probe_compile: bool = False) -> Capabilities:
    """The (cached) capability profile of a device; probing takes milliseconds, except compile."""
    dev = torch.device(device)
    if dev.type != "cpu" and dev.index is None:
        dev = torch.device(dev.type, 0)
    return _profile(str(dev), probe_compile)

"""The kernel registry: for each op, a reference implementation plus fast paths, chosen once per
(device type, dtype, autocast dtype) and logged with the reason.

    register("rms_norm", "fused", fused.rms_norm, device_types=("cpu",), why="torch's one-kernel RMSNorm")

Choice rules, in order:
1. `DIJI_KERNELS=op:impl[,op:impl…]` forces an implementation (`all:reference` forces every op);
   a forced implementation that does not apply to the device/dtype is a recorded fallback.
2. Otherwise the applicable implementation with the highest priority that is not opt-in. Opt-in
   implementations (e.g. `torch.compile`d regions, which cost 30-70 s of compilation on a CPU) are
   only used when forced.
3. A fast path that raises at run time is a recorded fallback: that (op, device, dtype) switches to the
   reference for the rest of the process, and the error is logged once with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from diji.compute.fallback import FALLBACKS
from diji.errors import DijiError

log = logging.getLogger("diji.kernels")

ENV = "DIJI_KERNELS"
REFERENCE = "reference"


@dataclass(frozen=True)
class Impl:
    op: str
    """Operator name, e.g. 'rms_norm'."""
    name: str
    """Implementation name, unique per op ('reference' is the definition of correct)."""
    fn: Callable
    """The function; same signature as the reference."""
    device_types: tuple[str, ...] = ()
    """Device types it runs on; () = any."""
    dtypes: tuple[torch.dtype, ...] = ()
    """Input dtypes it supports; () = any."""
    requires: tuple[str, ...] = ()
    """Capability probes that must pass (names of Capabilities fields, e.g. 'fused_attention')."""
    priority: int = 0
    """Higher wins among applicable implementations; the reference has priority 0."""
    opt_in: bool = False
    """Only chosen when forced through DIJI_KERNELS."""
    slow_start: bool = False
    """Compiles on first use (tens of seconds); conformance checks it only when asked (--slow-start)."""
    why: str = ""
    """One line on what it does better (printed by diji doctor)."""

    def applies(self, device_type: str, dtype: torch.dtype) -> tuple[bool, str]:
        if self.device_types and device_type not in self.device_types:
            return False, f"runs on {', '.join(self.device_types)}, not {device_type}"
        if self.dtypes and dtype not in self.dtypes:
            return False, f"supports {', '.join(str(d).removeprefix('torch.') for d in self.dtypes)}"
        for cap in self.requires:
            from diji.compute.profile import capabilities

            probe = getattr(capabilities(device_type), cap)
            if not probe.ok:
                return False, f"needs {cap}: {probe.why}"
        return True, ""


@dataclass(frozen=True)
class Choice:
    impl: Impl
    reason: str


def parse_override(text: str) -> dict[str, str]:
    """'rms_norm:fused, cross_entropy:reference' → {op: impl}; a malformed entry is a DijiError."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, sep, impl = part.partition(":")
        if not sep or not op or not impl:
            raise DijiError(f"{ENV}: expected op:impl entries separated by commas, got '{part}'")
        out[op.strip()] = impl.strip()
    return out


class Registry:
    def __init__(self) -> None:
        self._impls: dict[str, dict[str, Impl]] = {}
        self._chosen: dict[tuple, Choice] = {}
        self._builtins_loaded = False
        self._forced: dict[str, str] = {}

    # ---- registration ----------------------------------------------------------------------------
    def register(self, op: str, name: str, fn: Callable, **kw) -> Impl:
        impl = Impl(op, name, fn, **kw)
        self._impls.setdefault(op, {})[name] = impl
        self._chosen = {k: v for k, v in self._chosen.items() if k[0] != op}
        return impl

    def unregister(self, op: str, name: str) -> None:
        self._impls.get(op, {}).pop(name, None)
        self._chosen = {k: v for k, v in self._chosen.items() if k[0] != op}

    def _ensure_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            from diji.kernels import builtin

            builtin.register_all(self)

    def ops(self) -> list[str]:
        self._ensure_builtins()
        return list(self._impls)

    def impls(self, op: str) -> dict[str, Impl]:
        self._ensure_builtins()
        if op not in self._impls:
            raise DijiError(f"unknown kernel op '{op}' (known: {', '.join(self._impls)})")
        return dict(self._impls[op])

    @contextlib.contextmanager
    def forced(self, mapping: dict[str, str]) -> Iterator[None]:
        """Force implementations inside a block, like DIJI_KERNELS ({'all': 'reference'} for the reference)."""
        saved = self._forced
        self._forced = {**saved, **mapping}
        self._chosen.clear()
        try:
            yield
        finally:
            self._forced = saved
            self._chosen.clear()

    def reset(self) -> None:
        """Forget cached choices (after changing DIJI_KERNELS, or in tests)."""
        self._chosen.clear()

    # ---- choice ----------------------------------------------------------------------------------
    def choose(self, op: str, device_type: str, dtype: torch.dtype, amp: torch.dtype | None = None) -> Choice:
        key = (op, device_type, dtype, amp)
        choice = self._chosen.get(key)
        if choice is None:
            choice = self._decide(op, device_type, dtype, amp)
            self._chosen[key] = choice
            amp_txt = f" (autocast {str(amp).removeprefix('torch.')})" if amp is not None else ""
            log.info("kernel %s on %s/%s%s: %s — %s", op, device_type, str(dtype).removeprefix("torch."),
                     amp_txt, choice.impl.name, choice.reason)
        return choice

    def _decide(self, op: str, device_type: str, dtype: torch.dtype, amp: torch.dtype | None) -> Choice:
        impls = self.impls(op)
        forced = {**parse_override(os.environ.get(ENV, "")), **self._forced}
        want = forced.get(op, forced.get("all"))
        if want is not None:
            if want not in impls:
                raise DijiError(f"{ENV} asks for {op}:{want}, but {op} has only: {', '.join(impls)}")
            ok, why_not = impls[want].applies(device_type, dtype)
            if ok:
                return Choice(impls[want], f"forced by {ENV}")
            FALLBACKS.record(f"kernel:{op}:{want}:{device_type}",
                             f"{ENV} asked for {op}:{want}, which {why_not}; choosing automatically")
        best, reason = impls[REFERENCE], "the reference (no fast path applies)"
        for impl in sorted(impls.values(), key=lambda i: -i.priority):
            if impl.name == REFERENCE or impl.opt_in:
                continue
            ok, _ = impl.applies(device_type, dtype)
            if ok and impl.priority > best.priority:
                best, reason = impl, f"fast path for {device_type}/{str(dtype).removeprefix('torch.')}: {impl.why}"
                break
        return Choice(best, reason)

    def call(self, op: str, x: torch.Tensor, *args, **kwargs):
        """Run `op` with the implementation chosen for x's device and dtype (and the autocast state)."""
        dt = x.device.type
        amp = torch.get_autocast_dtype(dt) if torch.is_autocast_enabled(dt) else None
        return self.run(op, dt, x.dtype, amp, x, *args, **kwargs)

    def run(self, op: str, device_type: str, dtype: torch.dtype, amp: torch.dtype | None, *args, **kwargs):
        """Run `op` chosen for an explicit (device type, dtype, autocast dtype) key."""
        key = (op, device_type, dtype, amp)
        choice = self._chosen.get(key) or self.choose(op, device_type, dtype, amp)
        impl = choice.impl
        if impl.name == REFERENCE:
            return impl.fn(*args, **kwargs)
        try:
            return impl.fn(*args, **kwargs)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            ref = self._impls[op][REFERENCE]
            FALLBACKS.record(f"kernel:{op}:{impl.name}:{device_type}",
                             f"{op}:{impl.name} failed on {device_type}/{dtype} ({type(e).__name__}: {e}); "
                             "using the reference from now on")
            self._chosen[key] = Choice(ref, f"{impl.name} failed at run time")
            return ref.fn(*args, **kwargs)

    def chosen(self) -> dict[str, dict[str, str]]:
        """What has been chosen so far: {'op on device/dtype': {'impl', 'reason'}}."""
        out = {}
        for (op, dt, dtype, amp), c in self._chosen.items():
            amp_txt = f"+autocast:{str(amp).removeprefix('torch.')}" if amp is not None else ""
            out[f"{op} on {dt}/{str(dtype).removeprefix('torch.')}{amp_txt}"] = {"impl": c.impl.name,
                                                                                 "reason": c.reason}
        return out


# The process-wide registry: kernels are looked up deep inside model code, which must not carry it.
REGISTRY = Registry()

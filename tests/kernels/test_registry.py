"""Every fast path agrees with its reference (forward and backward); the registry's choice rules hold."""

import pytest
import torch

from diji.compute.fallback import FALLBACKS
from diji.errors import DijiError
from diji.kernels import fused, ops, reference
from diji.kernels.registry import REGISTRY, Registry, parse_override
from diji.kernels.specs import SPECS

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def fresh_choices():
    REGISTRY.reset()
    yield
    REGISTRY.reset()


def run(fn, case, dtype):
    args = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in case.args]
    args = [dtype if isinstance(a, torch.dtype) else a for a in args]
    for i in case.grad:
        args[i] = args[i].detach().requires_grad_(True)
    outs = fn(*args, **case.kwargs)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    if case.grad:
        torch.manual_seed(0)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
    return [o.detach().double() for o in outs] + [args[i].grad.double() for i in case.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("op", sorted(SPECS))
def test_every_fast_path_matches_its_reference(op, dtype):
    impls = REGISTRY.impls(op)
    for case in SPECS[op]():
        want = run(impls["reference"].fn, case, dtype)
        for name, impl in impls.items():
            if name == "reference":
                continue
            got = run(impl.fn, case, dtype)
            for g, w in zip(got, want, strict=True):
                err = float((g - w).abs().max() / w.abs().max().clamp_min(1e-12))
                assert err <= TOL[dtype], f"{op}:{name} {case.name} rel err {err:.2e}"


def test_chunked_cross_entropy_over_many_chunks_and_all_ignored(monkeypatch):
    monkeypatch.setattr(fused, "CHUNK_ROWS", 7)
    torch.manual_seed(0)
    logits = torch.randn(50, 40, dtype=torch.float64, requires_grad=True)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 40, (50,))
    t[::5] = -100
    for fast, ref, inputs in ((fused.cross_entropy, reference.cross_entropy, (logits,)),
                              (fused.linear_cross_entropy, reference.linear_cross_entropy, (h, w))):
        a = fast(*inputs, t)
        ga = torch.autograd.grad(a, inputs)
        b = ref(*inputs, t)
        gb = torch.autograd.grad(b, inputs)
        assert torch.allclose(a, b, atol=1e-6)  # both compute in float32
        for x, y in zip(ga, gb, strict=True):
            assert torch.allclose(x, y, atol=1e-6)
    all_ignored = torch.full((50,), -100)
    assert torch.isnan(fused.cross_entropy(logits, all_ignored)) == torch.isnan(reference.cross_entropy(logits, all_ignored))


def test_linear_cross_entropy_never_holds_full_logits(monkeypatch):
    """Saved tensors of the fused loss are the inputs and per-row statistics, never an N×V matrix."""
    monkeypatch.setattr(fused, "CHUNK_ROWS", 16)
    h = torch.randn(64, 8, requires_grad=True)
    w = torch.randn(1000, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        fused.linear_cross_entropy(h, w, torch.randint(0, 1000, (64,))).backward()
    assert max(saved) == 1000 * 8  # the weight itself; a full logits tensor would be 64 * 1000
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        reference.linear_cross_entropy(h, w, torch.randint(0, 1000, (64,))).backward()
    assert max(saved) >= 64 * 1000


def test_choice_is_made_once_logged_and_overridable(monkeypatch, caplog):
    x, w = torch.randn(2, 3, 8), torch.ones(8)
    with caplog.at_level("INFO", logger="diji.kernels"):
        ops.rms_norm(x, w, 1e-5)
        ops.rms_norm(x, w, 1e-5)
    assert sum("kernel rms_norm on cpu/float32: fused" in r.message for r in caplog.records) == 1
    monkeypatch.setenv("DIJI_KERNELS", "rms_norm:reference")
    REGISTRY.reset()
    ops.rms_norm(x, w, 1e-5)
    assert REGISTRY.chosen()["rms_norm on cpu/float32"] == {"impl": "reference", "reason": "forced by DIJI_KERNELS"}
    monkeypatch.setenv("DIJI_KERNELS", "all:reference")
    REGISTRY.reset()
    ops.swiglu(x, x)
    assert REGISTRY.chosen()["swiglu on cpu/float32"]["impl"] == "reference"


def test_bad_override_is_a_clear_error(monkeypatch):
    with pytest.raises(DijiError, match="op:impl"):
        parse_override("rms_norm")
    monkeypatch.setenv("DIJI_KERNELS", "rms_norm:turbo")
    REGISTRY.reset()
    with pytest.raises(DijiError, match="rms_norm has only: reference, fused, compiled"):
        ops.rms_norm(torch.randn(2, 4), torch.ones(4), 1e-5)


def test_fast_path_that_fails_at_run_time_falls_back_once_and_is_counted():
    reg = Registry()
    reg.register("double", "reference", lambda x: x * 2)

    def broken(x):
        raise RuntimeError("no kernel for this device")

    reg.register("double", "fast", broken, priority=10, why="test")
    FALLBACKS.reset()
    x = torch.ones(3)
    assert torch.equal(reg.call("double", x), x * 2)
    assert torch.equal(reg.call("double", x), x * 2)
    assert FALLBACKS.counts() == {"kernel:double:fast:cpu": 1}  # switched to the reference for good
    assert "no kernel for this device" in FALLBACKS.reasons()["kernel:double:fast:cpu"]


def test_device_and_dtype_keys_and_opt_in():
    reg = Registry()
    reg.register("op", "reference", lambda x: x)
    reg.register("op", "bf16only", lambda x: x, dtypes=(torch.bfloat16,), priority=10)
    reg.register("op", "compiled", lambda x: x, priority=20, opt_in=True)
    reg.register("op", "elsewhere", lambda x: x, device_types=("nowhere",), priority=30)
    assert reg.choose("op", "cpu", torch.float32).impl.name == "reference"
    assert reg.choose("op", "cpu", torch.bfloat16).impl.name == "bf16only"
    with reg.forced({"op": "compiled"}):
        assert reg.choose("op", "cpu", torch.float32).impl.name == "compiled"
    assert reg.choose("op", "cpu", torch.float32).impl.name == "reference"


def test_compiled_regions_are_opt_in():
    for op in ("rms_norm", "apply_rope", "swiglu"):
        impl = REGISTRY.impls(op)["compiled"]
        assert impl.opt_in and impl.slow_start
        assert REGISTRY.choose(op, "cpu", torch.float32).impl.name != "compiled"


@pytest.mark.slow
def test_forced_compiled_swiglu_matches_reference():
    g, u = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    with REGISTRY.forced({"swiglu": "compiled"}):
        got = ops.swiglu(g, u)
        assert REGISTRY.chosen()["swiglu on cpu/float32"]["impl"] == "compiled"
    assert torch.allclose(got, reference.swiglu(g, u), atol=1e-6)

"""Device choice, capability probes and the fallback recorder."""

import logging

import pytest
import torch

from diji.compute.backends import BACKENDS, backend_for
from diji.compute.device import autocast, distributed_backend, select_device
from diji.compute.fallback import FallbackRecorder
from diji.compute.profile import capabilities, probe_dtype
from diji.errors import DijiError


def test_cpu_profile_is_probed_with_reasons():
    caps = capabilities("cpu")
    assert caps.device_type == "cpu" and caps.dist_backend == "gloo"
    assert caps.supports("float32") and caps.supports(torch.float64)
    assert all(p.why for p in caps.dtypes.values())
    assert caps.memory_bytes > 0
    assert caps.fused_attention.why.startswith("sdpa picks")
    assert not caps.compile.ok and "not probed" in caps.compile.why
    assert caps.to_dict()["dtypes"]["float32"]["ok"] is True


def test_dtype_probe_reports_failure_reason():
    assert not probe_dtype(torch.device("meta"), "float32").ok


def test_diji_device_overrides_config(monkeypatch):
    monkeypatch.setenv("DIJI_DEVICE", "cpu")
    choice = select_device("auto")
    assert choice.device.type == "cpu" and "DIJI_DEVICE" in choice.reason
    monkeypatch.setenv("DIJI_DEVICE", "nosuchdevice")
    with pytest.raises(DijiError, match="from DIJI_DEVICE"):
        select_device("auto")
    monkeypatch.delenv("DIJI_DEVICE")
    assert "auto" in select_device("auto").reason


def test_each_backend_is_one_entry_and_unknown_devices_get_gloo():
    assert len({b.device_type for b in BACKENDS}) == len(BACKENDS)
    assert backend_for("cpu").dist_backend == "gloo"
    assert backend_for("brand-new-accelerator").dist_backend == "gloo"
    assert distributed_backend(torch.device("cpu")) == "gloo"


def test_fallbacks_are_logged_once_and_counted(caplog):
    rec = FallbackRecorder()
    with caplog.at_level(logging.WARNING, logger="diji.fallback"):
        for _ in range(3):
            rec.record("op:x", "no fused kernel")
        rec.record("op:y", "ran on the host")
    assert rec.counts() == {"op:x": 3, "op:y": 1} and rec.total() == 4
    assert [r.getMessage() for r in caplog.records] == ["fallback op:x: no fused kernel", "fallback op:y: ran on the host"]


def test_autocast_is_a_noop_in_float32_and_lowers_matmuls_in_bf16():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "float32"):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bfloat16"):
        assert (x @ x).dtype == torch.bfloat16

"""What diji knows about each accelerator back-end, as data: one small entry per device type.

Adding a back-end is one `Backend(...)` line below (see docs/compute.md). Everything else — dtypes,
fused attention, whether `torch.compile` works, memory — is *probed* at run time by
`diji.compute.profile`, never assumed from this table.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    device_type: str
    """torch device type string, e.g. 'cpu', 'cuda', 'npu'."""
    dist_backend: str
    """torch.distributed collective back-end for this device (gloo, nccl, hccl, …)."""
    plugin: str = ""
    """Python module of the out-of-tree PyTorch device plugin that registers the device type ('' = in tree)."""
    vendor: str = ""
    """Who ships the plugin (shown by `diji doctor`)."""


BACKENDS: tuple[Backend, ...] = (
    Backend("cpu", "gloo"),
    Backend("cuda", "nccl", vendor="NVIDIA CUDA / AMD ROCm (HIP builds also report 'cuda')"),
    Backend("xpu", "xccl", vendor="Intel"),
    Backend("mps", "gloo", vendor="Apple"),
    Backend("npu", "hccl", plugin="torch_npu", vendor="Huawei Ascend"),
    Backend("mlu", "cncl", plugin="torch_mlu", vendor="Cambricon"),
    Backend("musa", "mccl", plugin="torch_musa", vendor="Moore Threads"),
)

BY_TYPE = {b.device_type: b for b in BACKENDS}


def backend_for(device_type: str) -> Backend:
    """The entry for a device type; an unknown type gets gloo, which every torch build has."""
    return BY_TYPE.get(device_type, Backend(device_type, "gloo"))


def load_plugins() -> dict[str, str]:
    """Import the device plugins that are installed (and only those); returns {module: version or error}.

    Plugins register their device type with torch when imported. Recent plugins also auto-load through
    torch's `torch.backends` entry point, so importing here is harmless when that already happened.
    """
    found: dict[str, str] = {}
    for b in BACKENDS:
        if not b.plugin or importlib.util.find_spec(b.plugin) is None:
            continue
        try:
            mod = importlib.import_module(b.plugin)
            found[b.plugin] = str(getattr(mod, "__version__", "unknown version"))
        except Exception as e:  # a broken plugin must not stop diji from running on the CPU
            found[b.plugin] = f"import failed: {type(e).__name__}: {e}"
    return found

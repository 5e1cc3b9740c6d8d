"""Only diji.compute names a device type or a vendor's collective library (STYLE.md rule 5).

Everything else asks compute/ (select_device, capabilities, autocast, distributed) and stays portable to
any accelerator with a PyTorch device plugin. String literals and `torch.<vendor>` attribute use are
checked; prose in comments and docstrings may mention vendors.
"""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diji"
VENDOR = re.compile(r"^(cuda|npu|mlu|xpu|musa|mps|hpu|rocm|hip|nccl|hccl|cncl|xccl|mccl|torch_npu|torch_mlu|torch_musa)"
                    r"(:\d+)?$", re.IGNORECASE)
ATTRS = {"cuda", "npu", "mlu", "xpu", "musa", "mps", "hpu"}


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if VENDOR.match(node.value.strip()):
                out.append(f"{path}:{node.lineno}: string {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in ATTRS:
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                out.append(f"{path}:{node.lineno}: torch.{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            out += [f"{path}:{node.lineno}: import {n}" for n in names if VENDOR.match(n.split(".")[0])]
    return out


def test_no_vendor_strings_outside_compute():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "compute":
            continue
        bad += violations(path)
    assert not bad, "\n".join(bad)


def test_the_check_itself_finds_vendor_strings(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text('"""Docs may say cuda."""\nimport torch\ndev = "cuda:0"\ntorch.npu.synchronize()\nb = "nccl"\n')
    found = violations(sample)
    assert len(found) == 3 and "'cuda:0'" in found[0]

"""Imports point one way (STYLE.md rule 11) and `import diji` needs no optional package (rule 6).

Layers: compute, kernels (0) ← model (1) ← data, train, eval, serve, safety, observe (2) ← the command
line (cli.py, quickstart.py, every */commands.py). Shared utilities (errors, io, config, options) sit below all.
Every import counts, also the lazy ones inside functions: a lazy import still points a direction.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "diji"
BASE = {"errors", "io", "config", "options", "__init__"}
LAYER = {"compute": 0, "kernels": 0, "model": 1, "data": 2, "train": 2, "eval": 2, "serve": 2, "safety": 2,
         "observe": 2}
CLI = 3
OPTIONAL = ("transformers", "fastapi", "uvicorn", "tiktoken", "prometheus_client", "jinja2", "pyarrow",
            "zstandard", "py3langid", "ray", "openai", "httpx", "datatrove", "lm_eval", "triton", "torch_npu",
            "torch_mlu", "torch_musa")


def layer_of(parts: list[str]) -> int:
    """parts: module path below diji, e.g. ['train', 'loop']."""
    if parts[-1] == "commands" or parts[0] in ("cli", "quickstart", "__main__"):
        return CLI
    if parts[0] in BASE:
        return -1
    return LAYER.get(parts[0], CLI)


def modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        yield path, [p for p in parts if p != "__init__"] or ["__init__"]


def test_imports_point_one_way():
    bad = []
    for path, parts in modules():
        mine = layer_of(parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if not name.startswith("diji."):
                    continue
                target = name.split(".")[1:]
                if layer_of(target) > mine or (mine == -1 and layer_of(target) != -1):
                    bad.append(f"{'/'.join(parts)} (layer {mine}) imports {name} (layer {layer_of(target)})")
    assert not bad, "\n".join(bad)


BLOCKER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ImportError(f"optional package {{name}} blocked by the test")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("code", [
    "import diji; assert diji.__version__",
    "import diji.cli as c; c.build_parser()",
    "import diji.kernels.ops, diji.compute.profile, diji.compute.conformance, diji.model.generate, diji.train.loop",
], ids=["import-diji", "cli-parser", "compute-kernels-train"])
def test_no_optional_package_needed(code):
    done = subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_diji_does_no_work():
    code = "import sys, diji; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('diji.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout

"""The quickstart's embedded corpus: text this machine already has, so the quickstart needs no network.

We take the installed Python standard library: its docstrings (English prose about programming) and
its source code. Files are parsed with `ast`, never imported — importing runs code, opens windows
(`turtle`, `tkinter`) and is slow. The corpus is deterministic for a given Python installation: files
are visited in the order of the sha256 of their relative path, which is a fixed pseudo-random order, so
a byte cap takes a spread of modules instead of the alphabetical first few.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
import warnings
from pathlib import Path

from diji.errors import DijiError
from diji.io import atomic_open

DOCS_FILE = "stdlib-docs.jsonl"
CODE_FILE = "stdlib-code.jsonl"
DEFAULT_MAX_BYTES = 12_000_000

# Test suites hold deliberately odd text (invalid encodings, generated garbage); vendored and
# third-party trees are not the standard library.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled", "turtledemo"}


def stdlib_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(module-relative path, file) for every .py of the standard library, in the corpus' fixed order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DijiError(f"cannot find the Python standard library at {root}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune: never walk site-packages
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                files.append((p.relative_to(root).as_posix(), p))
    files.sort(key=lambda rp: hashlib.sha256(rp[0].encode()).hexdigest())
    return files


def _module_name(rel: str) -> str:
    name = rel[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def docstring_document(source: str, module: str) -> str | None:
    """The module's docstrings as one prose document: a heading per documented object, then its docstring."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in old modules: not our concern here
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return None
    parts: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name.startswith("_") and not child.name.startswith("__"):
                    continue  # private helpers: their docstrings are terse notes, not documentation
                qual = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    if isinstance(child, ast.ClassDef):
                        head = f"class {qual}"
                    else:
                        head = f"{qual}({ast.unparse(child.args)})"
                    parts.append(f"{head}\n\n{doc}")
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{qual}.")

    mod_doc = ast.get_docstring(tree)
    if mod_doc:
        parts.append(f"Module {module}\n\n{mod_doc}")
    # Headings name objects relative to the module (`Class.method(args)`): repeating the full dotted
    # path before every method would make the document's n-grams repetitive, and it is noise to learn.
    visit(tree, "")
    return "\n\n\n".join(parts) if parts else None


def build_default_corpus(
    out_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES, docs_share: float = 0.5, stdlib: Path | None = None
) -> list[Path]:
    """Write `stdlib-docs.jsonl` (docstrings) and `stdlib-code.jsonl` (source) under `out_dir`; returns both paths.

    `max_bytes` caps the UTF-8 size of all texts; `docs_share` of it goes to docstrings first and what
    they leave unused goes to code. Each line is `{"text", "source", "kind"}`.
    """
    if max_bytes <= 0:
        raise DijiError(f"max_bytes must be positive, got {max_bytes}")
    if not 0.0 <= docs_share <= 1.0:
        raise DijiError(f"docs_share must be in [0, 1], got {docs_share}")
    files = stdlib_files(stdlib)
    texts: dict[str, str | None] = {}

    def source(rel: str, p: Path) -> str | None:
        if rel not in texts:  # read lazily: a small cap reads only a few files
            try:
                texts[rel] = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                texts[rel] = None  # a few stdlib files are deliberately not UTF-8; skip them
        return texts[rel]

    docs_budget = int(max_bytes * docs_share)
    docs: list[dict[str, str]] = []
    used = 0
    misses = 0
    for rel, p in files:
        if used >= docs_budget or misses >= 25:
            break  # full, or nearly: parsing every remaining module to fill the last bytes is slow
        src = source(rel, p)
        if src is None or p.stat().st_size > 4 * docs_budget:
            continue  # docstrings are a fraction of a file: one much larger than the budget cannot fit
        text = docstring_document(src, _module_name(rel))
        if not text:
            continue
        n = len(text.encode("utf-8"))
        if used + n > docs_budget:
            misses += 1
            continue  # try smaller modules; the order is fixed, so the result still is
        misses = 0
        docs.append({"text": text, "source": f"stdlib/{rel}#docstrings", "kind": "docstrings"})
        used += n

    code: list[dict[str, str]] = []
    for rel, p in files:
        if used >= max_bytes:
            break
        if used + p.stat().st_size > max_bytes:
            continue  # UTF-8 size ≥ file size only for BOMs; stat avoids reading files that cannot fit
        src = source(rel, p)
        if not src or not src.strip():
            continue
        n = len(src.encode("utf-8"))
        if used + n > max_bytes:
            continue
        code.append({"text": src, "source": f"stdlib/{rel}", "kind": "code"})
        used += n

    out_dir = Path(out_dir)
    paths = []
    for name, rows in ((DOCS_FILE, docs), (CODE_FILE, code)):
        path = out_dir / name
        with atomic_open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths

from __future__ import annotations

import json
from pathlib import Path

from diji.data.corpus import build_default_corpus, docstring_document


def test_docstring_document_uses_ast_not_import() -> None:
    src = '"""Module doc."""\nimport sys\nsys.exit(3)\n\ndef f(a, b=1):\n    """Add things."""\n\nclass C:\n    """A class."""\n    def m(self):\n        """Method."""\n\ndef _private():\n    """hidden"""\n'
    doc = docstring_document(src, "pkg.mod")
    assert doc is not None
    assert doc.startswith("Module pkg.mod\n\nModule doc.")
    assert "\nf(a, b=1)\n\nAdd things." in doc
    assert "class C\n\nA class." in doc and "C.m(self)\n\nMethod." in doc
    assert "hidden" not in doc
    assert docstring_document("def (:", "bad") is None


def test_build_default_corpus_capped_and_deterministic(tmp_path: Path) -> None:
    a = build_default_corpus(tmp_path / "a", max_bytes=400_000)
    b = build_default_corpus(tmp_path / "b", max_bytes=400_000)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    rows = [json.loads(line) for p in a for line in p.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"docstrings", "code"}
    assert 0 < sum(len(r["text"].encode()) for r in rows) <= 400_000

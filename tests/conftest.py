"""Shared fixtures; the helpers they use live in testkit.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit import synthetic_docs, write_data_dir


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data"), synthetic_docs(400))

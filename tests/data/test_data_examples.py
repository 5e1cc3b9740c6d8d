from __future__ import annotations

from pathlib import Path

import pytest

from diji.config import load_config
from diji.data.prepare import DataConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_data_toml_is_the_defaults() -> None:
    """examples/data.toml documents the defaults; it must not drift from the code."""
    assert load_config(DataConfig, EXAMPLES / "data.toml") == DataConfig()


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("data*.toml")))
def test_example_configs_load(name: str) -> None:
    cfg = load_config(DataConfig, EXAMPLES / name, ["num_workers=1"])
    assert cfg.num_workers == 1

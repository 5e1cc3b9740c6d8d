from dataclasses import dataclass, field

import pytest

from diji.config import ConfigError, apply_overrides, dumps_toml, from_dict, load_config, to_dict
from diji.train.config import PretrainConfig


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_load_toml_with_typed_overrides(tmp_path):
    p = write(tmp_path, '[data]\npath = "d"\n[train]\nmax_steps = 5\n')
    cfg = load_config(PretrainConfig, p, ["train.batch_size=3", "optim.lr=1e-2", 'run.name="x"', "optim.warmup_steps=0"])
    assert cfg.train.max_steps == 5 and cfg.train.batch_size == 3 and cfg.optim.lr == 0.01
    assert cfg.run.name == "x"


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.max_stepz=3", "unknown config key 'train.max_stepz'"),
        ("train.max_steps=1.5", "'train.max_steps': expected an integer"),
        ("train.max_steps=true", "'train.max_steps': expected an integer"),
        ("optim.lr=fast", "'optim.lr': expected a number"),
        ("run.dtype=float8", "run.dtype must be one of"),
        ("optim.schedule=linear", "'optim.schedule'"),
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("justtext", "--set expects key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(PretrainConfig, None, ['data.path="d"', override])


def test_bad_toml_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="bad TOML"):
        load_config(PretrainConfig, write(tmp_path, "[train\nmax_steps = "))
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.toml")


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="seq_len"):
        load_config(PretrainConfig, None, ['data.path="d"', "data.seq_len=4096"])
    with pytest.raises(ConfigError, match="data.path is required"):
        load_config(PretrainConfig, None, [])


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(PretrainConfig, None, ['data.path="d"', "optim.beta2=0.99"])
    again = load_config(PretrainConfig, write(tmp_path, dumps_toml(to_dict(cfg))))
    assert again == cfg


def test_lists_become_tuples_and_nested_dataclasses():
    @dataclass(frozen=True)
    class Inner:
        xs: tuple[int, ...] = ()

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = field(default_factory=Inner)
        name: str | None = None

    o = from_dict(Outer, apply_overrides({}, ["inner.xs=[1, 2]"]))
    assert o.inner.xs == (1, 2) and o.name is None
    with pytest.raises(ConfigError, match=r"inner.xs\[1\]"):
        from_dict(Outer, {"inner": {"xs": [1, "a"]}})

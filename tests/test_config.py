import dataclasses
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest

from diji.config import (
    ConfigError,
    apply_overrides,
    describe_toml,
    dumps_toml,
    field_docs,
    from_dict,
    load_config,
    to_dict,
    tomllib,
)
from diji.config_cli import STAGES, resolve, stage_class
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


# ---- discoverable configs (`diji config show|keys`) -------------------------------------------------

# The keys each stage needs before its config is valid (so the round trip can build it).
REQUIRED = {"pretrain": ['data.path="d"'], "sft": ["train.init_from=ckpt"], "grpo": ["train.init_from=ckpt"]}


def leaf_fields(cls, prefix=""):
    """(section, key) for every field of every dataclass reachable from cls, read from the classes."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix.rstrip("."), f.name


def shown_keys(text):
    """(section, key) of every `key = value` or `# key = (unset)` line, and the comment above it."""
    section, out, comment = "", {}, ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif " = " in line and not line.startswith("# ") or line.endswith(" = (unset)"):
            out[(section, line.lstrip("# ").split(" = ")[0])] = comment
        if line.startswith("#"):
            comment = line
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_config_show_lists_every_field_with_its_doc_and_loads_back(stage):
    cls = stage_class(stage)
    cfg, problem = resolve(stage, None, REQUIRED.get(stage, []))
    assert problem == ""
    text = describe_toml(cfg)
    shown = shown_keys(text)
    expected = set(leaf_fields(cls))
    assert expected - set(shown) == set(), f"{stage}: fields missing from `config show`"
    assert "(undocumented)" not in text, f"{stage}: a field has no docstring"
    # every field's docstring is the comment block right above it (its last line, then the type)
    for section, key in expected:
        obj = cfg
        for part in filter(None, section.split(".")):
            obj = getattr(obj, part)
        doc = field_docs(type(obj)).get(key)
        if doc:
            assert shown[(section, key)].startswith("# " + doc.splitlines()[-1].strip()), (section, key)
    assert from_dict(cls, tomllib.loads(text)) == cfg


def test_config_show_on_the_command_line_round_trips(tmp_path):
    args = [sys.executable, "-m", "diji", "config", "show", "sft", "--set", "train.init_from=base",
            "--set", "run.name=2024-05-01", "--set", "lora.rank=4"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "# Run directory name under out_dir" in out.stdout
    assert "# Also report held-out accuracy on this task's test split" in out.stdout
    saved = tmp_path / "sft.toml"
    saved.write_text(out.stdout)
    from diji.train.sft import SFTConfig

    cfg = load_config(SFTConfig, saved)
    assert cfg.run.name == "2024-05-01" and cfg.lora.rank == 4 and cfg.train.init_from == "base"
    keys = subprocess.run([sys.executable, "-m", "diji", "config", "keys", "sft"], capture_output=True,
                          text=True, timeout=120)
    assert keys.returncode == 0 and "data.eval_task" in keys.stdout and "lora.rank" in keys.stdout


def test_config_show_of_incomplete_defaults_notes_the_problem_on_stderr():
    out = subprocess.run([sys.executable, "-m", "diji", "config", "show", "pretrain"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "data.path is required" in out.stderr
    assert tomllib.loads(out.stdout)["data"]["path"] == ""


@pytest.mark.parametrize("override,expect", [
    ("run.name=2024-05-01", "2024-05-01"),       # a bare date is text for a text field
    ('run.name="quoted"', "quoted"),              # quotes still work
    ("run.name=1e3", "1e3"),
    ("run.name=true", "true"),
    ("run.device=cpu", "cpu"),
])
def test_text_fields_take_bare_text(override, expect):
    cfg = load_config(PretrainConfig, None, ["data.path=d", override])
    key = override.split("=")[0].split(".")[1]
    assert getattr(cfg.run, key) == expect and cfg.data.path == "d"


def test_typed_fields_still_read_toml_and_lists_take_commas():
    cfg = load_config(PretrainConfig, None, ["data.path=d", "train.max_steps=7", "optim.lr=2e-3",
                                             "run.progress=false", "run.loggers=jsonl,tensorboard"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 2e-3 and cfg.run.progress is False
    assert cfg.run.loggers == ("jsonl", "tensorboard")
    assert load_config(PretrainConfig, None, ["data.path=d", 'run.loggers=["mlflow"]']).run.loggers == ("mlflow",)
    with pytest.raises(ConfigError, match="run.loggers: unknown logger 'wandb'"):
        load_config(PretrainConfig, None, ["data.path=d", "run.loggers=wandb"])


def test_a_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        load_config(PretrainConfig, None, ["data.path=d", "model.hiden_size=3"])

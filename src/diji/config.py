"""Typed configuration: frozen dataclasses loaded from TOML, overridable with `--set key=value`.

Every stage declares its own frozen dataclass (a docstring per field, checks in `__post_init__`);
this module only knows how to build any such dataclass from a nested dict, apply dotted overrides with
type checking, and turn it back into a dict for `config.toml` and `lineage.json`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from diji.errors import DijiError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")

DEFAULT_TEMPERATURE = 1.0
"""The one sampling-temperature default of `diji generate`, `diji chat`, the chat page and the API.
1.0 samples the model's own distribution, is the OpenAI API's documented default (so a client written
for that API gets the behaviour it expects), and is the temperature GRPO rolls out at; greedy decoding
is one flag away (`--temperature 0`). Evaluation keeps its own greedy default: it scores, it does not chat."""


class ConfigError(DijiError, ValueError):
    """A config file or override is wrong; the message names the key."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert where lossless (int → float, list → tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} does not match {tp}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            near = difflib.get_close_matches(k, list(fields), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(f"unknown config key '{full}' ({hint}known: {', '.join(sorted(fields))})")
        kwargs[k] = _coerce(v, hints[k], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(f"invalid config{where}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass → plain nested dict (tuples become lists), suitable for TOML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables → {"section.key": value}; None values are dropped (TOML cannot hold them, so a
    None key and an absent key are the same setting) and an empty table counts as absent."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        elif v is not None and v != {}:
            out[f"{prefix}{k}"] = v
    return out


def parse_value(text: str, tp: Any = None) -> Any:
    """The right-hand side of `--set key=value`, read for a field of type `tp`.

    A field that holds text takes the text as it is (`run.name=2024-05-01` is a string, not a TOML date);
    a quoted TOML string still works (`run.name="x"`). Any other field reads a TOML value (numbers,
    booleans, lists), and a list of strings also accepts `a,b,c`. Without `tp`, TOML first, else text.
    """
    try:
        parsed = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = _NOT_TOML
    if tp is not None and _holds_text(tp):
        return parsed if isinstance(parsed, str) else text
    if parsed is not _NOT_TOML:
        return parsed
    if tp is not None and _holds_text(_item_type(tp)):
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


_NOT_TOML = object()


def _holds_text(tp: Any) -> bool:
    """True for str, str | None and Literal of strings."""
    if tp is str:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return len(rest) == 1 and _holds_text(rest[0])
    return False


def _item_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (tuple, list) and typing.get_args(tp):
        return typing.get_args(tp)[0]
    return None


def field_type(cls: type, dotted: str) -> Any:
    """The annotation of `section.key` inside dataclass `cls`, or None when there is no such field."""
    tp: Any = cls
    for part in dotted.split("."):
        if not _is_dataclass_type(tp):
            return None
        hints = _hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type | None = None) -> dict[str, Any]:
    """Apply `section.key=value` strings to a nested dict; with `cls`, each value is read for its field's
    type (see parse_value). Type checking happens in from_dict."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, _, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = parse_value(raw.strip(), field_type(cls, key) if cls is not None else None)
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"bad TOML in {path}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a TOML file (optional) plus `--set` overrides."""
    data = read_toml(path) if path else {}
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for resolved configs (tables of scalars/lists; None values are omitted)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], name: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and v is not None}
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if name and scalars:
            lines.append(f"[{name}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        if scalars:
            lines.append("")
        for k, v in subtables.items():
            emit(v, f"{name}.{k}" if name else k)

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


# ---- discoverable configs: every key with its docstring -----------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring — the string literal right after the field in the class body (the
    convention of STYLE.md rule 2) — read from the source with `ast`; inherited fields included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (a frozen app): keys still list, undocumented
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def type_name(tp: Any) -> str:
    """A short readable spelling of an annotation: int, str | None, tuple[str, ...], 'a' | 'b'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (tuple, list, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    key: str
    """Dotted name, as `--set` takes it."""
    type: str
    value: Any
    doc: str


def config_keys(cfg: Any, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of a config instance, depth first, with its type, current value and docstring."""
    cls = type(cfg)
    hints, docs = _hints(cls), field_docs(cls)
    out: list[ConfigKey] = []
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += config_keys(value, f"{key}.")
        else:
            out.append(ConfigKey(key, type_name(hints[f.name]), to_dict(value), docs.get(f.name, "")))
    return out


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _class_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc  # dataclass's generated signature: no doc


def describe_toml(cfg: Any) -> str:
    """The resolved config as TOML with every key's docstring as a comment above it (`diji config show`).
    Unset (None) keys appear as comments, so every field is listed and the text still loads back."""
    lines: list[str] = []

    def emit(obj: Any, name: str, doc: str) -> None:
        cls = type(obj)
        hints, docs = _hints(cls), field_docs(cls)
        fields = dataclasses.fields(obj)
        scalars = [f for f in fields if not dataclasses.is_dataclass(getattr(obj, f.name))]
        if name:
            lines.append("")
            lines.extend(_comment(doc or _class_doc(cls)))
            lines.append(f"[{name}]")
        for f in scalars:
            value = to_dict(getattr(obj, f.name))
            lines.extend(_comment(f"{docs.get(f.name, '(undocumented)')}  [{type_name(hints[f.name])}]"))
            lines.append(f"# {f.name} = (unset)" if value is None else f"{f.name} = {_toml_value(value)}")
        for f in fields:
            if f not in scalars:
                emit(getattr(obj, f.name), f"{name}.{f.name}" if name else f.name, docs.get(f.name, ""))

    emit(cfg, "", "")
    return "\n".join(lines).strip() + "\n"


def build_unchecked(cls: type[T], data: dict[str, Any]) -> T:
    """Like from_dict, but skips the top level's cross-field checks (e.g. 'data.path is required'), so
    `diji config show` can print a stage's defaults before the user has filled in its required keys.
    Each section is still built and checked."""
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        from_dict(cls, {unknown[0]: data[unknown[0]]})  # raises the usual 'unknown config key' error
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = _coerce(data[f.name], hints[f.name], f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        object.__setattr__(obj, f.name, value)
    return obj

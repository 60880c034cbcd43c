"""Typed dataclass configs with YAML in/out.

Generic machinery lives here (`from_dict`, `load_yaml`, `apply_overrides`,
`to_dict`); each area declares its own dataclasses (training configs below,
model configs next to the models) and reuses these helpers, so every config
file in configs/ is parsed the same strict way: unknown keys and wrong types
are errors naming the key. A mapping's `base: FILE` (or a list of files) includes another YAML
file, relative to the including one, with the mapping's own keys merged over it (`resolve_includes`).
A setting's range or choices is stated once, on its field (`setting` / `Field`), and `Field.validate`
(numbers: `check_number`) is the one checker of YAML configs, config.json settings and CLI flags alike.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


# Limits on the text files a user may be handed (configs from strangers): stated once, here.
MAX_CONFIG_BYTES = 16 << 20        # a config.json / YAML config / index file (real ones are < 1 MB)
MAX_YAML_NODES = 100_000           # scalars + collections in one YAML document (after parsing)


def read_json_object(path, error: type[Exception] = ValueError) -> dict:
    """A JSON file whose top level is an object, as a dict; anything else (too large, not UTF-8, not
    JSON, nested past Python's recursion limit, a list, NaN-free or not) is one `error` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise error(f"{path}: {size} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    except ValueError as e:     # JSONDecodeError, or an integer past Python's digit limit
        raise error(f"{path}: invalid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: invalid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def read_config_json(directory, error: type[Exception] = ValueError, missing_error: type[Exception] | None = None,
                     expected: str = "a model directory") -> dict:
    """`directory/config.json` as a dict; one clear error (naming the file) if it is missing or not a JSON object."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise (missing_error or error)(f"{directory}: config.json not found (expected {expected})")
    return read_json_object(path, error)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases (a "billion laughs" expands them without bound downstream) and
    with at most MAX_YAML_NODES nodes; tags other than the standard ones stay refused (SafeLoader)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"aliases (*name) are not allowed in configs (line {mark.line + 1})")
        self._nodes = getattr(self, "_nodes", 0) + 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {MAX_YAML_NODES} values")
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str):
    """THE YAML reader of configs and `key=value` overrides: one ConfigError naming `where` for bad
    syntax, aliases, unknown tags (e.g. !!python/object) or too many values."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: too large for a config (limit {MAX_CONFIG_BYTES} bytes)")
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML (nested too deeply)") from None


def is_int(v) -> bool:
    """A JSON integer (bools are not)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _unbounded(x) -> bool:
    return x is None or x in (math.inf, -math.inf)


def number_rule(kind, lo=None, hi=None, lo_open: bool | None = None, hi_open: bool = False, also: tuple = ()) -> str:
    """What `check_number` asks of a value, in words: "in [1, 64]", "> 0 and <= 1e+06", "0 or >= 2"."""
    lo_open = kind is float if lo_open is None else lo_open
    low = None if _unbounded(lo) else (f"> {lo:g}" if lo_open else f">= {lo:g}")
    high = None if _unbounded(hi) else (f"< {hi:g}" if hi_open else f"<= {hi:g}")
    if low and high:
        text = f"in [{lo}, {hi}]" if kind is int and not lo_open and not hi_open else f"{low} and {high}"
    else:
        text = low or high or ("an integer" if kind is int else "a finite number")
    return " or ".join([*(f"{v:g}" for v in also), text])


def check_number(name: str, value, kind, lo=None, hi=None, error: type[Exception] = ValueError,
                 lo_open: bool | None = None, hi_open: bool = False, also: tuple = ()):
    """THE range check of every number a user gives (config fields, CLI flags, model files): `value` as
    `kind` (int: a JSON integer; float: any finite JSON number) within `lo`..`hi` (None: unbounded;
    `lo` excluded for floats unless lo_open=False, `hi` excluded when hi_open) or one of `also`; else
    one `error` "NAME must be RULE, got VALUE" (the same words wherever the value came from)."""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    lead = f"{name} " if name else ""
    ok_type = is_int(value) if kind is int else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        raise error(f"{lead}must be {'an integer' if kind is int else 'a number'}, got {shown}")
    try:
        value = kind(value)
    except OverflowError:
        raise error(f"{lead}is out of range, got {shown}") from None
    shown = repr(value) if len(repr(value)) <= 40 else shown     # as checked: a JSON 0 for a float reads 0.0
    if value in also:
        return value
    lo_open = kind is float if lo_open is None else lo_open
    ok = math.isfinite(value) and (_unbounded(lo) or (value > lo if lo_open else value >= lo)) and \
        (_unbounded(hi) or (value < hi if hi_open else value <= hi))
    if not ok:
        raise error(f"{lead}must be {number_rule(kind, lo, hi, lo_open, hi_open, also)}, got {shown}")
    return value


@dataclasses.dataclass(frozen=True)
class Field:
    """One typed setting (a config field, a CLI flag's value, a projector option): its type, default
    (None: optional, null allowed) and allowed values, stated once. A number is finite and within
    lo..hi (floats: lo excluded unless lo_open=False; hi excluded when hi_open) or one of `also`; a str
    (or each str of a list) is one of `choices` (empty: any); a list of numbers checks each as `items`."""
    kind: type                       # bool, int, float, str, list or dict (a JSON object)
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    lo_open: bool | None = None
    hi_open: bool = False
    also: tuple = ()                 # numbers allowed outside lo..hi (a window of 0: one window)
    items: type = str                # list: the kind of its items
    shape: Callable | None = None    # a structured value's own check (label, value) -> value (its owner's rule,
                                     # e.g. sharding.check_axis_rules), after the kind check

    def check(self, name: str, value, where: str = ""):
        """`value` checked (None: the default), or one ConfigError "WHERE: NAME must be ...", the same
        words as a flag's (`flag_type`) and every config loader's (`from_dict`)."""
        if value is None:
            return copy.deepcopy(self.default)
        return self.validate(f"{where}: {name}" if where and name else where or name, value)

    def validate(self, label: str, value, error: type[Exception] | None = None):
        """A non-None `value` checked against this rule; `label` names it in the one-line error."""
        error = error or ConfigError
        lead = f"{label} " if label else ""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise error(f"{lead}must be true or false, got {value!r}")
            return value
        if self.kind in (int, float):
            return check_number(label, value, self.kind, self.lo, self.hi, error, self.lo_open, self.hi_open, self.also)
        if self.kind is dict:
            if not isinstance(value, dict):
                raise error(f"{lead}must be a mapping, got {value!r}")
            return dict(value)
        if self.kind is list and not isinstance(value, (list, tuple)):
            raise error(f"{lead}must be a list, got {value!r}")
        if self.shape is not None:
            return self.shape(label, value)
        if self.kind is list and self.items in (int, float):
            return [check_number(f"{label}[{i}]", v, self.items, self.lo, self.hi, error, self.lo_open, self.hi_open,
                                 self.also) for i, v in enumerate(value)]
        for v in (value if self.kind is list else [value]):
            if not isinstance(v, str) or self.choices and v not in self.choices:
                what = f"one of {list(self.choices)}" if self.choices else "a string"
                what = f"a list of {what}" if self.kind is list else what
                raise error(f"{lead}must be {what}, got {value!r}")
        return list(value) if self.kind is list else value

    def setting(self, default=dataclasses.MISSING, required: bool = False):
        """This rule as a dataclass field (read by `check_settings` and `from_dict`), its default the rule's
        (or `default`, e.g. None where "unset" means "the model's own"; none when `required`); lists /
        dicts copied per instance."""
        rule = self if default is dataclasses.MISSING else dataclasses.replace(self, default=default)
        if required:
            return dataclasses.field(metadata={"rule": rule})
        if isinstance(rule.default, (list, dict)):
            return dataclasses.field(default_factory=lambda: copy.deepcopy(rule.default), metadata={"rule": rule})
        return dataclasses.field(default=rule.default, metadata={"rule": rule})


def setting(kind: type, default=None, lo=None, hi=None, choices: tuple = (), **more):
    """A dataclass field carrying its `Field` rule: `Field(kind, default, lo, hi, choices, ...).setting()`."""
    return Field(kind, default, lo, hi, tuple(choices), **more).setting()


SEED = Field(int, 0, 0, 2 ** 32 - 1)     # every random seed a config takes (numpy's range)


def settings_rules(cls) -> dict[str, Field]:
    """{name: Field} of a dataclass declared with `setting(...)` fields."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls) if "rule" in f.metadata}


def check_settings(cls: type[T], data: dict, where: str, allow_unknown: bool = False) -> T:
    """An instance of dataclass `cls` (its fields declared with `setting`) from a JSON mapping: every
    field checked by its rule, missing ones defaulted; an unknown key (unless allow_unknown), a wrong
    type or an out-of-range value is one ConfigError naming `where` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of settings, got {data!r}")
    rules = settings_rules(cls)
    unknown = sorted(set(data) - set(rules))
    if unknown and not allow_unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {sorted(rules)})")
    return cls(**{name: rule.check(name, data.get(name), where) for name, rule in rules.items()})


def _from_yaml_text(tp, value):
    """A scalar as `tp` where YAML left it otherwise: "1e-4" (PyYAML reads it as a string) or "yes" from an
    override, 2.0 for an int, 3 for a float; anything else unchanged (the checker then refuses it)."""
    if isinstance(value, str) and tp is bool and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, str) and tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            return value
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return float(value) if tp is float and is_int(value) else value


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:                 # `X | None`: X's own error (naming the key) is the clearest
            return _coerce(real[0], value, where)
        for a in real:
            try:
                return _coerce(a, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, where, nested=True)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (bool, int, float, str):          # scalars: the one checker's words ("must be an integer, ...")
        return Field(tp).validate(where, _from_yaml_text(tp, value))
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping read from `where` (a file): unknown keys and bad types are
    ConfigErrors naming "WHERE: key.sub"; a field declared with `setting` is checked by its rule (the
    same words as a flag's); an error the dataclass itself raises (a rule between fields) names WHERE."""
    return _build(cls, data, where, nested=False)


def _build(cls, data: dict, label: str, nested: bool):
    name = label or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; known: {sorted(fields)}")
    missing = [f.name for f in fields.values() if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{name}: missing required key(s) {missing}")
    kwargs = {}
    for k, v in data.items():
        sub = f"{label}.{k}" if nested else f"{label}: {k}" if label else k
        rule = fields[k].metadata.get("rule")
        if rule is not None and v is not None and rule.kind in (bool, int, float, str):
            kwargs[k] = rule.validate(sub, _from_yaml_text(rule.kind, v))      # type and range: the rule's words
            continue
        value = _coerce(hints[k], v, sub)
        kwargs[k] = value if rule is None or value is None else rule.validate(sub, value)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None
    except ConfigError as e:
        msg = str(e)
        raise type(e)(msg if not label or msg.startswith(label) else f"{name}: {msg}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested mapping."""
    data = dict(data)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        key, raw = ov.split("=", 1)
        parts = key.split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"override {ov!r}: key {key!r} has an empty part")
        value = parse_yaml(raw, f"override {key}") if raw != "" else ""
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return data


MAX_INCLUDE_DEPTH = 8              # `base:` includes nested deeper than this are refused (a config is not a program)
MAX_INCLUDES = 64                  # files one config may include in all (a fan-out of includes grows exponentially)
INCLUDE_KEY = "base"


def _read_config_text(path: Path, where: str) -> str:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where}: too large for a config (limit {MAX_CONFIG_BYTES} bytes)")
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start})") from None


def merge(base: dict, top: dict) -> dict:
    """`top` over `base`: mappings merge key by key (recursively), anything else in `top` replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_includes(data, path: Path, chain: tuple[Path, ...] = (), count: list[int] | None = None):
    """`data` (parsed from `path`) with every `base: FILE` (or a list of files, later ones winning) in
    any mapping replaced by that file's mapping, the including mapping's own keys merged over it
    (`merge`). FILE is relative to the including file. A missing file, a cycle, an include nested past
    MAX_INCLUDE_DEPTH, more than MAX_INCLUDES includes in all or an included file that is not a mapping
    is one ConfigError naming the file."""
    count = [0] if count is None else count
    if isinstance(data, list):
        return [resolve_includes(v, path, chain, count) for v in data]
    if not isinstance(data, dict):
        return data
    data = {k: resolve_includes(v, path, chain, count) for k, v in data.items()}
    if INCLUDE_KEY not in data:
        return data
    refs = data.pop(INCLUDE_KEY)
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
        raise ConfigError(f"{path}: {INCLUDE_KEY} must be a file name or a list of file names, got {refs!r}")
    merged: dict = {}
    for ref in refs:
        target = (path.parent / ref).resolve()
        if target in chain or target == path.resolve():
            raise ConfigError(f"{path}: {INCLUDE_KEY} {ref} includes itself (cycle: "
                              f"{' -> '.join(str(p) for p in (*chain, path.resolve(), target))})")
        if len(chain) + 1 >= MAX_INCLUDE_DEPTH:
            raise ConfigError(f"{path}: {INCLUDE_KEY} {ref} nests includes deeper than {MAX_INCLUDE_DEPTH}")
        count[0] += 1
        if count[0] > MAX_INCLUDES:
            raise ConfigError(f"{path}: {INCLUDE_KEY} {ref} is past the {MAX_INCLUDES} includes one config may make")
        where = f"{path}: {INCLUDE_KEY} {ref}"
        if not target.is_file():
            raise ConfigError(f"{where}: included file not found" if not target.exists()
                              else f"{where}: included path is not a file")
        included = parse_yaml(_read_config_text(target, str(target)), str(target)) or {}
        if not isinstance(included, dict):
            raise ConfigError(f"{target}: an included config must be a mapping (included by {path})")
        merged = merge(merged, resolve_includes(included, target, (*chain, path.resolve()), count))
    return merge(merged, data)


def load_mapping(path: str | Path) -> dict:
    """The top-level mapping of YAML config `path` with its `base:` includes resolved."""
    path = Path(path)
    data = parse_yaml(_read_config_text(path, str(path)), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return resolve_includes(data, path)


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Dataclass `cls` from YAML config `path` (`base:` includes resolved, then `key=value` overrides)."""
    data = apply_overrides(load_mapping(path), overrides or [])
    return from_dict(cls, data, where=str(path))


def dump_yaml(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))

"""Typed dataclass configs: each setting's rule stated once, on its field, and the one checker.

Generic machinery lives here (`setting` / `Field`, `from_dict`, `check_settings`, `to_dict`); each
area declares its own dataclasses (training configs, model configs next to the models, the PE-Rank
config, server settings) and reuses it, so every config is typed the same strict way: unknown keys
and wrong types are errors naming the key. A setting's range or choices is stated once, on its field,
and `Field.validate` (numbers: `check_number`) is the one checker of YAML configs, config.json
settings and CLI flags alike. Reading the files themselves (bounded JSON, strict YAML, `base:`
includes, `key=value` overrides) is perank_jax.core.config_files.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Callable, TypeVar


T = TypeVar("T")


class ConfigError(ValueError):
    pass


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

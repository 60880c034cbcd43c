"""Config files a stranger may hand over: bounded JSON, strict YAML, `base:` includes, overrides.

Every config file is read here: `read_json_object` / `read_config_json` (a model's config.json),
`parse_yaml` (THE YAML reader: aliases refused, at most MAX_YAML_NODES values), `load_mapping` (a
YAML config with its `base: FILE` includes resolved, relative to the including file, the mapping's
own keys merged over them), `apply_overrides` (`a.b=value`), and `load_yaml` / `dump_yaml`, which type
a mapping through perank_jax.core.config.from_dict. Every problem is one ConfigError (or the caller's
error class) naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml

from perank_jax.core.config import ConfigError, from_dict, to_dict

T = TypeVar("T")


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


def read_config_text(path: Path, where: str) -> str:
    """A config file's text (UTF-8, at most MAX_CONFIG_BYTES), or one ConfigError naming `where`."""
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
        included = parse_yaml(read_config_text(target, str(target)), str(target)) or {}
        if not isinstance(included, dict):
            raise ConfigError(f"{target}: an included config must be a mapping (included by {path})")
        merged = merge(merged, resolve_includes(included, target, (*chain, path.resolve()), count))
    return merge(merged, data)


def load_mapping(path: str | Path) -> dict:
    """The top-level mapping of YAML config `path` with its `base:` includes resolved."""
    path = Path(path)
    data = parse_yaml(read_config_text(path, str(path)), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return resolve_includes(data, path)


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Dataclass `cls` from YAML config `path` (`base:` includes resolved, then `key=value` overrides)."""
    data = apply_overrides(load_mapping(path), overrides or [])
    return from_dict(cls, data, where=str(path))


def dump_yaml(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))

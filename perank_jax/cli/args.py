"""Argument types and checks shared by the `perank` subcommands (perank_jax.cli).

Each is an argparse `type=` or a pre-flight check that raises ValueError (printed by the CLI as one
line, exit status 2) before any model loads or any output is written. Output-path checks live in
perank_jax.core.outputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from perank_jax.core.config import Field


def flag_type(rule: Field | Callable[[], Field], kind: type | None = None):
    """An argparse `type=` from a setting's rule (`perank_jax.core.config.Field`): the text parsed as the rule's
    kind, then checked by the rule itself, so a flag that mirrors a config field is refused with that
    field's words ("--window must be 0 or in [2, 1048576], got 1" where a config says "t.yaml: window must be ...").
    `rule` may be a function returning it (read when the flag is given: its module imports jax), then
    `kind` names the value's type for --help."""
    def parse(text: str):
        rule_ = rule if isinstance(rule, Field) else rule()
        if rule_.kind in (int, float):
            try:
                value = rule_.kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if rule_.kind is int else 'a number'}")
        else:
            value = text
        try:
            return rule_.validate("", value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = (rule.kind if isinstance(rule, Field) else kind or str).__name__
    return parse


def number(kind, lo=None, hi=None, lo_open=False):
    """An argparse type for a flag no config field mirrors: `kind` (int/float) within [lo, hi] (lo
    excluded when lo_open); NaN and infinities refused (a non-finite factor would turn every score into
    NaN or inf). The same rule and checker as a config field's (`flag_type`)."""
    return flag_type(Field(kind, None, lo, hi, lo_open=lo_open))


POSITIVE = number(int, 1)
NONNEGATIVE = number(int, 0)


def perank_flag(name: str, kind: type):
    """The type of a flag that sets PE-Rank model setting `name` (of `kind`): PERankConfig's rule for it."""
    def rule():
        from perank_jax.weights.perank_config import PERANK_RULES
        return PERANK_RULES[name]
    return flag_type(rule, kind)


def mesh_shape(text: str) -> tuple[int, int, int]:
    """An argparse type: 'data=8' or 'data=2,fsdp=4' (axes of perank_jax.core.sharding, default 1 each)."""
    from perank_jax.core.sharding import MESH_AXES
    sizes = dict.fromkeys(MESH_AXES, 1)
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in sizes or not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: expected AXIS=SIZE[,AXIS=SIZE] with AXIS in "
                                             f"{'/'.join(MESH_AXES)} and SIZE >= 1, e.g. data=8")
        sizes[name.strip()] = int(value)
    return tuple(sizes[a] for a in MESH_AXES)


def sharding_rules(text: str) -> list:
    """An argparse type: logical-axis rules over perank_jax.core.sharding.RULES, as YAML/JSON text or a
    file holding it, e.g. '[[mlp, null], [heads, tensor]]' (a training config's `mesh.rules` form),
    checked by the same rule as that field."""
    import os

    from perank_jax.core.config import ConfigError
    from perank_jax.core.config_files import parse_yaml, read_config_text
    from perank_jax.core.sharding import AXIS_RULES
    try:             # the one YAML reader of configs (bounded, aliases refused), a file's text read boundedly
        where = text if os.path.isfile(text) else "the text"
        value = parse_yaml(read_config_text(Path(text), text) if where == text else text, where)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(f"not a YAML list of [logical axis, mesh axis | null] pairs: {e}") from None
    try:
        return AXIS_RULES.validate("", value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def add_distributed(p) -> None:
    """--distributed and the coordinator flags: every process runs the same command (perank_jax.core.processes)."""
    g = p.add_argument_group("several processes (jax.distributed; as `perank train` with mesh.distributed=true)")
    g.add_argument("--distributed", action="store_true",
                   help="run as one of several processes (each runs the same command); a TPU pod slice or a "
                        "SLURM job provides the coordinator, elsewhere give the three flags below")
    g.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address, the same for all")
    g.add_argument("--num-processes", type=number(int, 1), default=None, metavar="N")
    g.add_argument("--process-id", type=number(int, 0), default=None, metavar="I", help="0 .. N-1")


def start_distributed(a) -> None:
    """Join the other processes when --distributed is given; the coordinator flags need it."""
    given = [f for f in ("coordinator_address", "num_processes", "process_id") if getattr(a, f) is not None]
    if not a.distributed:
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    if a.process_id is not None and a.num_processes is not None and a.process_id >= a.num_processes:
        raise ValueError(f"--process-id {a.process_id} must be below --num-processes {a.num_processes}")
    from perank_jax.core.processes import init_distributed
    init_distributed(a.coordinator_address, a.num_processes, a.process_id)


def warn_cut(counts, depth: int) -> None:
    """Say once how many queries had candidates beyond --depth (they are neither reranked nor written)."""
    cut = [c for c in counts if c > depth]
    if cut:
        warn(f"{len(cut)} of {len(counts)} queries have more than --depth {depth} candidates (up to {max(cut)}); "
             f"only the first {depth} of each are reranked and written (raise --depth to keep more)")

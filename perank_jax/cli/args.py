"""Argument types and checks shared by the `perank` subcommands (perank_jax.cli).

Each is an argparse `type=` or a pre-flight check that raises ValueError (printed by the CLI as one
line, exit status 2) before any model loads or any output is written. Output-path checks live in
perank_jax.core.outputs.
"""
from __future__ import annotations

import argparse
import sys


def number(kind, lo=None, hi=None, lo_open=False):
    """An argparse type: `kind` (int/float) within [lo, hi] (lo excluded when lo_open); NaN and
    infinities refused (a non-finite factor would turn every score into NaN or inf)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if v != v or (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
            bound = (f"> {lo}" if lo_open else f">= {lo}") if hi is None else \
                f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {bound})")
        return v
    parse.__name__ = kind.__name__
    return parse


POSITIVE = number(int, 1)
NONNEGATIVE = number(int, 0)


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

"""`perank` command line: thin wrappers that parse arguments and call the library.

One module per group of subcommands (models, rerank, workflows, serve, data); each subcommand has
one `add_<name>(sub)` that declares its arguments and sets `func` to a runner that imports the
library lazily (so `perank --help` is fast). Argument types and warnings shared by the
subcommands live in `perank_jax.cli.args`. Errors that the library raises for bad input
(ValueError subclasses, OSError) are printed as one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import re
import sys

from perank_jax.cli.args import perank_flag
from perank_jax.cli.data import add_data
from perank_jax.cli.models import add_convert, add_generate
from perank_jax.cli.rerank import EXAMPLE_SET, add_encode, add_rerank, print_rankings
from perank_jax.cli.serve import add_serve
from perank_jax.cli.workflows import add_evaluate, add_retrieve, add_tables, add_train

__all__ = ["EXAMPLE_SET", "build_parser", "main", "perank_flag", "print_rankings"]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (`perank rerank: error: ...`) and exit status 2."""

    def error(self, message):
        # a flag refused by its rule reads as the config key would: "--window must be ..." (args.flag_type)
        message = re.sub(r"^argument (\S+): must be ", r"\1 must be ", message)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="perank",
        description="PE-Rank in JAX: listwise LLM reranking with passage embeddings.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_convert, add_generate, add_encode, add_rerank, add_train,
                add_retrieve, add_evaluate, add_tables, add_data, add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:               # --help (0) or a usage error, already printed (2)
        return e.code
    from perank_jax.core.interrupts import Terminated, latched_interrupts
    try:
        with latched_interrupts():       # a Ctrl-C is never lost, even where Python drops it
            args.func(args)
    except (ValueError, OSError) as e:  # bad input, unusable paths, full disks: one clear line
        msg = str(e) if isinstance(e, ValueError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"perank {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:     # Ctrl-C: 130; SIGTERM (interrupts.Terminated): 143
        resume = "; rerun the same command to resume from the last checkpoint" if args.command == "train" else ""
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"\nperank {args.command}: {what}; no output was left half-written{resume}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    return 0


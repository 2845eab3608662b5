"""The ``kale-st`` parser: global options, then one subparser per command, each added by its command module.

Example:
    >>> args = build_parser().parse_args(["prune", "--layers", "2", "--output", "minilm-2l"])
    >>> args.function.__name__, args.layers
    ('prune', 2)
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

import kale_st
from kale_st.cli import build, demo, hub, measure
from kale_st.cli.arguments import PROG, Parser

#: Command modules in the order ``kale-st --help`` lists their commands; each has ``register(add_command)``.
COMMAND_MODULES = (build, measure, hub, demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``kale-st`` parser: one subparser per command."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show library logging and warnings")
    parser = Parser(prog=PROG, description="KALE query-encoder compression for sentence-transformers.",
                    epilog="Example: kale-st demo    (then: kale-st <command> --help)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logging and warnings")
    parser.add_argument("--version", action="version", version=f"{PROG} {kale_st.__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def add_command(name: str, function: Any, summary: str, *examples: str, details: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=textwrap.fill(f"{summary} {details}".strip(), 100),
            epilog="Example:\n" + "\n".join(f"  {example}" for example in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[verbose],
        )
        sub.set_defaults(function=function)
        return sub

    for module in COMMAND_MODULES:
        module.register(add_command)
    return parser

"""``kale-st``: the command line of kale_st, one subcommand per function of the Python API.

    kale-st demo                                                # align, score and time a 2-layer MiniLM on SciFact
    kale-st prune --model default --layers 2 --output minilm-2l # kale_st.prune_layers
    kale-st align --model default --queries queries.txt         # kale_st.align, saved to ./kale-out
    kale-st evaluate --model kale-out --data benchmarks/data/scifact
    kale-st bench --model kale-out                              # query latency, query model vs document model
    kale-st push --pair kale-out --query-repo me/minilm-kale-2l # AsymmetricPair.push_to_hub

Errors print one line, ``kale-st: error: ...``, and exit with status 2; a command reads its inputs before it checks
``--output``, so a bad input is reported first. Library logging and warnings are quiet unless ``-v`` is given.

Modules: ``arguments`` (one-line errors, argument types, shared options), ``loading`` (models, pairs, data),
``report`` (tables, recording into a pair), ``parser`` (the parser), and one per group of commands, each adding its
subcommands and options in ``register``: ``build`` (prune, align), ``measure`` (evaluate, bench), ``hub`` (push),
``demo``.
"""

from __future__ import annotations

import logging
import sys
import warnings

import datasets
import transformers
from huggingface_hub.utils import logging as hub_logging

from kale_st.cli.arguments import PROG, fail, say
from kale_st.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``kale-st``; errors from the library end the run with one line and exit status 2."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        args.function(args)
    except (ValueError, OSError, ImportError) as error:
        if args.verbose:
            logging.getLogger(__name__).exception("the command failed")
        fail(str(error) or type(error).__name__)
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted")
        sys.exit(130)


def _quiet_libraries(verbose: bool) -> None:
    """Library logging at ERROR, their per-step progress bars and Python warnings off, unless ``verbose`` (then
    kale_st logs at INFO too). The bars that matter stay: corpus encoding, training, Hub transfers."""
    library_level = logging.WARNING if verbose else logging.ERROR
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=library_level)
    transformers.logging.set_verbosity(library_level)
    datasets.logging.set_verbosity(library_level)
    hub_logging.set_verbosity(library_level)
    logging.getLogger("sentence_transformers").setLevel(library_level)
    logging.getLogger("kale_st").setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.simplefilter("ignore")
        transformers.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
        datasets.disable_progress_bars()

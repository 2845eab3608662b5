"""The parser's building blocks: one-line errors, argument types and the option groups several commands share.

Example:
    >>> parser = Parser(prog="kale-st")
    >>> add_output(parser, DEFAULT_OUTPUT)
    >>> parser.parse_args(["--output", "my-pair"]).output
    'my-pair'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from kale_st.align import DEFAULT_PSEUDO_QUERIES, align
from kale_st.cli.loading import BUNDLED_DATA, DEFAULT_MODEL_ID
from kale_st.evaluation import DEFAULT_CACHE
from kale_st.loss import DEFAULT_TEMPERATURE
from kale_st.precision import PRECISIONS
from kale_st.recipe import DEFAULT_RECIPE, RECIPES, Recipe
from kale_st.strategies import STRATEGIES

PROG = "kale-st"
DEFAULT_OUTPUT = "kale-out"
ALIGN_DEFAULTS = align.__kwdefaults__
#: ``add_command(name, function, summary, *examples, details="")``: adds a subcommand, returns its parser.
AddCommand = Callable[..., argparse.ArgumentParser]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``kale-st: error: ...``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.exit(2)


def say(message: str) -> None:
    """A progress line on stderr; results go to stdout."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- argument types


def layer_list(text: str) -> int | list[int]:
    """``2`` (how many layers to keep) or ``0,5`` (which ones)."""
    try:
        return [int(i) for i in text.split(",") if i.strip()] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer count (2) or comma-separated indices (0,5)")


def positive(kind: type) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def share(text: str) -> float:
    """A share from 0 to under 1 (``--real-query-share``)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to under 1")
    return value


# ------------------------------------------------------------------------------------------- shared options


def add_model(parser: argparse.ArgumentParser, pair: bool = False, base_model: bool = False) -> None:
    """``--model``; with ``base_model``, also ``--base-model`` (the Hub id a local model is a copy of)."""
    what = "a saved pair folder, a model folder" if pair else "a model folder"
    parser.add_argument(
        "--model", default="default", help=f"{what}, a Hugging Face model id or 'default' (the bundled "
        "all-MiniLM-L6-v2; default)"
    )
    if base_model:
        parser.add_argument(
            "--base-model", help="the Hugging Face model id --model is a local copy of, for the lineage and the "
            f"model cards (default: inferred from a Hub download; {DEFAULT_MODEL_ID} for 'default')"
        )


def add_alignment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=layer_list, default=ALIGN_DEFAULTS["layers"],
                        help="layers the query encoder keeps: a count (2; 0 for a static token table, "
                        "no transformer layer) or indices (0,5); default %(default)s")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default=ALIGN_DEFAULTS["strategy"],
                        help="which layers a count keeps; default: search (spread under 8 queries)")
    parser.add_argument("--temperature", type=positive(float), default=DEFAULT_TEMPERATURE,
                        help="KALE loss temperature; default %(default)s")
    parser.add_argument("--epochs", type=positive(float), help="passes over the queries instead of the step budget "
                        f"({recipe_help('max_steps')} steps)")
    parser.add_argument("--learning-rate", type=positive(float), help=recipe_help("learning_rate"))
    parser.add_argument("--max-steps", type=positive(int), help=f"step budget ({recipe_help('max_steps')})")
    parser.add_argument("--no-early-stopping", action="store_true",
                        help="train the whole budget (default: stop when agreement on held-out queries stops improving)")
    parser.add_argument("--batch-size", type=positive(int), help=recipe_help("batch_size"))
    parser.add_argument("--seed", type=int, default=ALIGN_DEFAULTS["seed"], help="default %(default)s")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction,
                        help="train with the student's configured dropout, or without; default: the recipe's "
                        "(off, on for 1 kept layer)")
    parser.add_argument("--real-query-share", type=share, help="with --queries and --corpus: repeat the real queries "
                        "until they make up at least this share of the training rows (0: each once); default: the "
                        "recipe's (0.2; 0 for 0 or 1 kept layers)")
    parser.add_argument("--precision", choices=PRECISIONS, default=ALIGN_DEFAULTS["precision"],
                        help="teacher targets and training steps in bfloat16 autocast (bf16) or float32 (fp32); "
                        "default %(default)s: bf16 where the hardware computes it (AVX512-BF16, AMX, bf16 GPUs)")


def alignment(args: argparse.Namespace) -> dict[str, Any]:
    """``align`` keyword arguments from the shared alignment options; the Trainer shows its progress bar."""
    return {
        "layers": args.layers,
        "strategy": args.strategy,
        "temperature": args.temperature,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "early_stopping": not args.no_early_stopping,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "precision": args.precision,
        "dropout": args.dropout,
        "real_query_share": args.real_query_share,
        "disable_tqdm": False,  # the Trainer hides it when transformers logs errors only
    }


def recipe_help(key: str) -> str:
    """``default: 0.0015 (0.02 for 0 layers, 0.003 for 1 layer)``: align's recipe (kale_st.recipe) by kept layers."""
    text = f"default: {getattr(DEFAULT_RECIPE, key):g}" + _exceptions(key, RECIPES)
    if key == "max_steps":  # the static student (0 layers) keeps its own budget, whatever the teacher
        transformers = {count: recipe for count, recipe in RECIPES.items() if count}
        text += f", at least {DEFAULT_RECIPE.steps_per_teacher_layer:g} per teacher layer"
        text += _exceptions("steps_per_teacher_layer", transformers)
    return text


def _exceptions(key: str, recipes: dict[int, Recipe]) -> str:
    """`` (0.02 for 0 layers, 0.003 for 1 layer)``: the kept layer counts whose recipe differs from the default."""
    default = getattr(DEFAULT_RECIPE, key)
    special = ", ".join(
        f"{getattr(recipe, key):g} for {count} layer{'s' * (count != 1)}"
        for count, recipe in recipes.items()
        if getattr(recipe, key) != default
    )
    return f" ({special})" if special else ""


def add_onnx(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", action="store_true", help="also save query/onnx/: the query model in ONNX, float32 "
                        "and int8 for this CPU (kale_st.onnx; pip install \"kale_st[onnx]\")")


def add_output(parser: argparse.ArgumentParser, default: str | None) -> None:
    if default is None:
        parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    else:
        parser.add_argument("--output", default=default, help="folder to write (new or empty); default %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --output")


def add_queries(parser: argparse.ArgumentParser, split: str, required: bool = True, corpus: bool = False) -> None:
    """``--queries`` and its options; with ``corpus``, ``--corpus`` (pseudo-queries) joins or replaces ``--queries``."""
    parser.add_argument(
        "--queries", required=required and not corpus,
        help="a text file (one query a line), a JSONL file, a BEIR folder or a Hugging Face dataset id"
        + ("" if required else "; default: the bundled SciFact"),
    )
    if corpus:
        parser.add_argument("--corpus", help="make pseudo-queries from these documents, with or without --queries (a "
                            "text file, one document a line; a JSONL file; or a BEIR folder's corpus.jsonl)")
        parser.add_argument("--pseudo-queries", type=positive(int), default=DEFAULT_PSEUDO_QUERIES,
                            help="with --corpus: how many pseudo-queries to make; default %(default)s")
    parser.add_argument("--split", default=split, help="split of a BEIR folder or dataset; default %(default)s")
    parser.add_argument("--query-column", help="text column of a JSONL file or dataset (default: query, text or "
                        "sentence)")
    parser.add_argument("--max-queries", type=positive(int), help="use only the first N queries")


def add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or Hugging Face id; "
                        f"default: the bundled SciFact ({BUNDLED_DATA})")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="document embedding cache; default "
                        "%(default)s")

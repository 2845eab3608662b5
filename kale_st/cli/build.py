"""Commands that build models: ``prune`` (kale_st.prune_layers) and ``align`` (kale_st.align).

Example:
    kale-st prune --model default --layers 2 --output minilm-2l
    kale-st align --model default --queries benchmarks/data/scifact --layers 2 --output kale-out
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from kale_st.align import LOSSES, align
from kale_st.cli.arguments import (
    ALIGN_DEFAULTS,
    DEFAULT_OUTPUT,
    AddCommand,
    add_alignment,
    add_model,
    add_onnx,
    add_output,
    add_queries,
    alignment,
    layer_list,
    say,
)
from kale_st.cli.loading import (
    base_model,
    check_onnx,
    check_output,
    load_model,
    load_query_texts,
    query_stream,
)
from kale_st.pruning import prune_layers, pruning_info
from kale_st.queries import iter_corpus
from kale_st.strategies import STRATEGIES


def prune(args: argparse.Namespace) -> None:
    """``kale_st.prune_layers``: save a copy of the model that keeps some of its layers."""
    queries = load_query_texts(args.queries, "train", None, None) if args.queries else None
    model = load_model(args.model)
    check_output(args.output, args.overwrite)
    pruned = prune_layers(model, args.layers, strategy=args.strategy, route=args.route, queries=queries,
                          base_model=base_model(args.model, args.base_model))
    if Path(args.output).exists():
        shutil.rmtree(args.output)
    pruned.save(args.output)
    info = pruning_info(pruned, args.route)
    print(f"kept layers {info['kept_layers']} of {info['num_layers']} ({info['strategy']}): saved to {args.output}")


def align_command(args: argparse.Namespace) -> None:
    """``kale_st.align``: prune the query encoder and align it to the original on queries; save the pair."""
    check_onnx(args.onnx)
    if args.queries is None and args.corpus is None:
        raise ValueError("pass --queries, --corpus (pseudo-queries from the documents) or both")
    if args.max_queries and args.queries is None:
        raise ValueError("--max-queries applies to --queries; with --corpus, --pseudo-queries sets how many")
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume resumes from the latest checkpoint of --checkpoint-dir: pass the interrupted run's "
                         "--checkpoint-dir")
    data: dict = {}
    parts = []
    if args.queries is not None:  # streamed, like the corpus: files of any size
        data["queries"] = query_stream(args.queries, args.split, args.query_column, args.max_queries)
        parts.append(f"the first {args.max_queries} --queries" if args.max_queries else "the --queries")
    if args.corpus is not None:
        if next(iter_corpus(args.corpus, args.query_column), None) is None:  # a missing file fails here, too
            raise ValueError(f"corpus {args.corpus!r} holds no document with text: pass a BEIR folder or a file of "
                             "documents")
        data |= {"corpus": args.corpus, "num_pseudo_queries": args.pseudo_queries}
        parts.append(f"up to {args.pseudo_queries} pseudo-queries from the --corpus documents")
    message = f"aligning on {' and '.join(parts)} ..."
    model = load_model(args.model)
    check_output(args.output, args.overwrite)
    say(message)
    pair = align(model, **data, query_column=args.query_column, loss=args.loss,
                 base_model=base_model(args.model, args.base_model), checkpoint_dir=args.checkpoint_dir,
                 resume_from_checkpoint=args.resume, **alignment(args))
    pair.save(args.output, overwrite=args.overwrite, router=args.router, onnx=args.onnx)
    meta = pair.metadata
    counts = f"{meta['num_queries']} alignment queries"
    if "corpus_documents" in meta:
        counts += f" ({meta['pseudo_queries']} pseudo-queries from {meta['corpus_documents']} documents)"
    print(
        f"{counts}, kept layers {meta['kept_layers']} of {meta['num_layers']}, "
        f"{meta['training_steps']} steps in {meta['alignment_seconds']:.0f} s: pair saved to {args.output}"
    )


def register(add_command: AddCommand) -> None:
    sub = add_command(
        "prune",
        prune,
        "Save a copy of a model that keeps only some of its transformer layers.",
        "kale-st prune --model default --layers 2 --output minilm-2l",
        "kale-st prune --model my-model --layers 0,5 --output my-model-2l",
        details="The copy records which layers it kept (kale_st.prune_layers).",
    )
    add_model(sub, base_model=True)
    sub.add_argument("--layers", type=layer_list, required=True, help="a count (2) or indices (0,5)")
    sub.add_argument("--strategy", choices=sorted(STRATEGIES), default="spread", help="default %(default)s")
    sub.add_argument("--queries", help="queries that --strategy search measures layers on: a text/JSONL file, a BEIR "
                     "folder (train split) or a Hugging Face dataset id")
    sub.add_argument("--route", help="for a Router model: the route to prune (for example query); default: all")
    add_output(sub, None)

    sub = add_command(
        "align",
        align_command,
        "Prune a copy of the query encoder and align it to the original on queries; save the pair.",
        "kale-st align --model default --queries benchmarks/data/scifact --layers 2 --output kale-out",
        "kale-st align --model my-model --queries queries.txt --layers 3 --epochs 10",
        "kale-st align --model default --queries benchmarks/data/scifact --layers 0 --output kale-static  # no layer",
        "kale-st align --model default --corpus benchmarks/data/scifact --pseudo-queries 1000  # no queries",
        "kale-st align --model default --queries queries.txt --checkpoint-dir ckpt --resume  # after an interruption",
        details="The document encoder is the model itself, unchanged (kale_st.align). Without queries, --corpus makes "
        "pseudo-queries from the documents (kale_st.pseudo_queries). Writes query/, document/ "
        "and kale_pair.json with model cards.",
    )
    add_model(sub, base_model=True)
    add_queries(sub, split="train", corpus=True)
    add_alignment(sub)
    sub.add_argument("--loss", choices=sorted(LOSSES), default=ALIGN_DEFAULTS["loss"], help="default %(default)s")
    sub.add_argument("--checkpoint-dir", help="save checkpoints (and the teacher targets) there, to resume a long run")
    sub.add_argument("--resume", action="store_true", help="resume from the latest checkpoint of --checkpoint-dir")
    sub.add_argument("--router", action="store_true", help="also save router/: one model for both sides")
    add_onnx(sub)
    add_output(sub, DEFAULT_OUTPUT)

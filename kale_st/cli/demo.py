"""``demo``: the main job. Align a 2-layer query encoder on SciFact, score it, time it and save it with its cards.

Example:
    kale-st demo
    kale-st demo --max-queries 64 --eval-queries 50 --epochs 1 --output /tmp/kale-quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import kale_st
from kale_st.align import DEFAULT_PSEUDO_QUERIES, align
from kale_st.benchmark import query_latency
from kale_st.cli.arguments import (
    DEFAULT_OUTPUT,
    AddCommand,
    add_alignment,
    add_data,
    add_model,
    add_onnx,
    add_output,
    alignment,
    positive,
    say,
)
from kale_st.cli.loading import base_model, beir_source, check_onnx, check_output, first_queries, load_model
from kale_st.cli.report import METRICS, latency_record, percent, rounded, table
from kale_st.evaluation import document_embeddings, evaluate_retrieval, load_beir
from kale_st.pair import task_model
from kale_st.pruning import prune_layers


def demo(args: argparse.Namespace) -> None:
    """Align a small query encoder on a BEIR train split; score teacher, pruned-only and KALE; time; save."""
    check_onnx(args.onnx)
    source, name = beir_source(args.data)
    train_queries = list(load_beir(source, "train").queries.values())[: args.max_queries]
    test, dataset = first_queries(load_beir(source, "test"), args.eval_queries, name, "test")
    model = load_model(args.model)
    check_output(args.output, args.overwrite)
    hub_id = base_model(args.model, args.base_model)
    teacher = task_model(model, "query")

    say(f"encoding {len(test.corpus)} documents with the teacher (cached in {args.cache_dir}) ...")
    corpus = document_embeddings(model, test.corpus, cache_dir=args.cache_dir)
    say(f"aligning on {len(train_queries)} {name} train queries and pseudo-queries from its documents ...")
    pair = align(model, train_queries, corpus=test.corpus, num_pseudo_queries=args.pseudo_queries, loss="kale",
                 base_model=hub_id, **alignment(args))
    pruned = prune_layers(teacher, pair.metadata["kept_layers"], base_model=hub_id)  # the same layers, not aligned
    say(f"scoring {len(test.queries)} {name} test queries ...")
    models = {"teacher": teacher, "pruned only": pruned, "KALE student": pair.query_model}
    scores = {label: evaluate_retrieval(m, test, corpus) for label, m in models.items()}
    test_queries = list(test.queries.values())
    say(f"timing encode_query on {len(test_queries)} test queries, the models interleaved ...")
    latency = query_latency(models, test_queries)

    meta = pair.metadata
    meta["evaluation"] = {
        "dataset": dataset,
        "teacher": rounded(scores["teacher"]),
        "student": rounded(scores["KALE student"]),
    }
    meta["latency"] = latency_record(latency, "teacher", "KALE student")
    pair.save(args.output, overwrite=args.overwrite, router=args.router, onnx=args.onnx)

    print(
        f"\n{Path(meta['source_model']).name}: {meta['num_layers']} -> {len(meta['kept_layers'])} query layers "
        f"{meta['kept_layers']}, aligned on {meta['real_queries']} train queries and {meta['pseudo_queries']} "
        f"pseudo-queries in {meta['alignment_seconds']:.0f} s ({meta['training_steps']} steps, {meta['stop_reason']})"
    )
    print(f"{dataset}: {len(test.queries)} queries, {len(test.corpus)} documents "
          "embedded once by the teacher")
    rows = [
        [
            label,
            str(kale_st.num_layers(m)),
            *(f"{scores[label][key]:.4f}" for key in METRICS),
            percent(scores[label]["ndcg@10"], scores["teacher"]["ndcg@10"]),
            f"{latency[label]['p50_ms']:.2f}",
            f"{latency[label]['speedup']:.2f}x",
        ]
        for label, m in models.items()
    ]
    print(table(["model", "layers", *METRICS.values(), "% of teacher nDCG", "p50 ms", "speedup"], rows))
    print(f"(p50: batch-1 encode_query, {latency['teacher']['threads']} threads)")
    print(f"\npair with model cards saved to {args.output}/ (query/, document/{', router/' if args.router else ''})")


def register(add_command: AddCommand) -> None:
    sub = add_command(
        "demo",
        demo,
        "Align a 2-layer query encoder on SciFact, score it, time it and save it with its model cards.",
        "kale-st demo",
        "kale-st demo --max-queries 64 --eval-queries 50 --epochs 1 --output /tmp/kale-quick",
        details="From --model (the bundled all-MiniLM-L6-v2): align on the train queries of --data (the bundled "
        "SciFact), score the teacher, the pruned-only copy and the KALE student on the test queries against the "
        "teacher's cached document embeddings, time their query encoding and save the pair to --output.",
    )
    add_model(sub, base_model=True)
    add_data(sub)
    add_alignment(sub)
    sub.add_argument("--max-queries", type=positive(int), help="align on only the first N train queries")
    sub.add_argument("--pseudo-queries", type=positive(int), default=DEFAULT_PSEUDO_QUERIES,
                     help="pseudo-queries from --data's documents that join the train queries; default %(default)s")
    sub.add_argument("--eval-queries", type=positive(int), help="score and time only the first N test queries")
    sub.add_argument("--router", action="store_true", help="also save router/: one model for both sides")
    add_onnx(sub)
    add_output(sub, DEFAULT_OUTPUT)

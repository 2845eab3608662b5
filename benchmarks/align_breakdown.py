"""Where ``align``'s time goes: teacher targets, layer choice, training steps and early-stopping evaluations.

Runs ``align(teacher, alignment_queries, corpus=corpus, layers=n)`` with the library defaults on the SciFact alignment
split (``protocol.py``) and times its parts by wrapping them (the run itself is unchanged). Prints one JSON line per
run; with ``--precision fp32 bf16`` the same call runs once in each precision, one after the other, and a last line
gives the ratios of their parts (fp32 seconds / bf16 seconds). Time it with the machine otherwise idle: the parts are
seconds of wall time.

    python benchmarks/align_breakdown.py --teacher minilm --layers 2
    python benchmarks/align_breakdown.py --teacher minilm --layers 0 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from typing import Any, Callable

import torch
from protocol import load_teacher, scifact_splits

import kale_st
from kale_st.precision import PRECISIONS

ALIGN = sys.modules["kale_st.align"]  # the module; kale_st.align is the function


def timed(seconds: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", choices=["minilm", "mpnet"], default="minilm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["auto"],
                        help="align's precision; several: one run each, in this order")
    parser.add_argument("--batch-size", type=int, default=None, help="align's batch size; default: its recipe's")
    args = parser.parse_args()

    seconds: dict[str, float] = defaultdict(float)
    ALIGN.teacher_targets = timed(seconds, "teacher targets", ALIGN.teacher_targets)
    ALIGN._student = timed(seconds, "student (layer choice, pruning)", ALIGN._student)
    trainer, evaluator = ALIGN.SentenceTransformerTrainer, ALIGN.StoredTargetsMSEEvaluator
    trainer.train = timed(seconds, "training with its evaluations", trainer.train)
    evaluator.__call__ = timed(seconds, "early-stopping evaluations", evaluator.__call__)

    splits = scifact_splits()
    teacher = load_teacher(args.teacher)
    runs: dict[str, dict[str, float]] = {}
    for precision in args.precision:
        seconds.clear()
        start = time.perf_counter()
        pair = kale_st.align(teacher, splits.alignment, corpus=splits.test.corpus, layers=args.layers,
                             precision=precision, batch_size=args.batch_size, disable_tqdm=True)
        total = time.perf_counter() - start
        meta = pair.metadata
        runs[meta["precision"]] = {name: round(value, 1) for name, value in seconds.items()} | {
            "whole align call": round(total, 1)}
        print(json.dumps({
            "teacher": args.teacher,
            "layers": args.layers,
            "kept_layers": meta["kept_layers"],
            "precision": meta["precision"],
            "queries": meta["num_queries"],
            "batch_size": meta["batch_size"],
            "steps": meta["training_steps"],
            "stop_reason": meta["stop_reason"],
            "threads": torch.get_num_threads(),
            "seconds": runs[meta["precision"]],
        }), flush=True)
    if {"fp32", "bf16"} <= runs.keys():
        ratios = {name: round(runs["fp32"][name] / runs["bf16"][name], 2)
                  for name in runs["fp32"] if runs["bf16"][name]}
        print(json.dumps({"fp32 seconds / bf16 seconds": ratios}))


if __name__ == "__main__":
    main()

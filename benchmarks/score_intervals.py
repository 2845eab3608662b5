"""How far a student's "% of the teacher" on SciFact's 300 test queries moves with the queries drawn: a paired bootstrap.

The transfer table scores each student once on 300 test queries, and its targets are read to a tenth of a point. This
script puts an interval on those figures: the per-query nDCG@10 of the teacher and of each new-defaults student
cached by ``transfer_table.py`` (same index, the untouched teacher's), then the queries resampled with replacement (the
same draw for teacher and student), and the 2.5th and 97.5th percentiles of ``100 * mean(student) / mean(teacher)``.
Per-query nDCG@10 is sentence-transformers' (binary relevance, ``InformationRetrievalEvaluator``): its mean must equal
the test score the transfer table recorded for the same model, or the script stops.

Writes ``benchmarks/results/score_intervals.{json,md}``; reads only what ``transfer_table.py`` wrote and cached (its
JSON, the students, the index).

    python benchmarks/score_intervals.py
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from protocol import TEACHERS, corpus_embeddings, load_teacher, ndcg_per_query, scifact_splits
from sentence_transformers import SentenceTransformer
from transfer_table import RESULTS as TABLE
from transfer_table import student_folder

from kale_st.evaluation import BeirData

RESULTS = Path(__file__).parent / "results" / "score_intervals"
K = 10


def per_query_ndcg(model: SentenceTransformer, data: BeirData, documents: torch.Tensor) -> torch.Tensor:
    """nDCG@10 of each of ``data``'s queries (in ``data.queries`` order) searching ``documents`` by cosine."""
    ids = list(data.queries)
    queries = model.encode([data.queries[i] for i in ids], convert_to_tensor=True, batch_size=64)
    top = model.similarity(queries, documents).topk(K, dim=1).indices.tolist()
    return torch.tensor(ndcg_per_query(top, ids, data, K), dtype=torch.float64)


def interval(student: torch.Tensor, teacher: torch.Tensor, draws: int, seed: int) -> tuple[float, float]:
    """The 95 % paired-bootstrap interval of 100 * mean(student) / mean(teacher)."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(teacher), (draws, len(teacher)), generator=generator)
    ratios = 100 * student[picks].mean(1) / teacher[picks].mean(1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return round(low, 1), round(high, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", nargs="+", choices=sorted(TEACHERS), default=["minilm", "mpnet"])
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = json.loads(TABLE.with_suffix(".json").read_text())["rows"]
    splits = scifact_splits()
    rows = []
    for name in args.teachers:
        teacher = load_teacher(name)
        documents = corpus_embeddings(teacher, splits)
        reference = per_query_ndcg(teacher, splits.test, documents)
        for recorded in [r for r in table if r["teacher"] == name and r["row"] in ("teacher", "new defaults")]:
            if recorded["row"] == "teacher":
                ndcg, label = reference, "teacher"
            else:
                folder = student_folder(recorded["row"], name, recorded["layers"])
                if not folder.is_dir():
                    print(f"skipped {folder.name}: not in the user cache (transfer_table.py made it on another machine)")
                    continue
                ndcg, label = per_query_ndcg(SentenceTransformer(str(folder), device="cpu"), splits.test, documents), folder.name
            if not math.isclose(float(ndcg.mean()), recorded["test"], abs_tol=1e-4):
                raise RuntimeError(f"{label}: per-query nDCG@10 averages {ndcg.mean():.4f}, the transfer table recorded "
                                   f"{recorded['test']}: rerun transfer_table.py for this row first")
            low, high = interval(ndcg, reference, args.draws, args.seed)
            rows.append({
                "teacher": name,
                "student": label,
                "kept_layers": recorded.get("kept_layers"),
                "recipe": recorded.get("recipe", "-"),
                "test": round(float(ndcg.mean()), 4),
                "percent_of_teacher": round(100 * float(ndcg.mean() / reference.mean()), 1),
                "interval_95": [low, high],
                "queries": len(ndcg),
            })
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps({"draws": args.draws, "seed": args.seed, "rows": rows}, indent=1))
    lines = ["| teacher | student | kept layers | recipe | test nDCG@10 | % of teacher | 95 % interval (paired bootstrap) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['teacher']} | {r['student']} | {r['kept_layers'] or '-'} | {r['recipe']} | {r['test']} | "
              f"{r['percent_of_teacher']} % | {r['interval_95'][0]} % to {r['interval_95'][1]} % |" for r in rows]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

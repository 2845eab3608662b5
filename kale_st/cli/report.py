"""What the commands print (plain-text tables) and record into a saved pair.

Example:
    >>> print(table(["model", "ms"], [["teacher", "8.1"], ["student", "2.9"]]))
    model     ms
    -------  ---
    teacher  8.1
    student  2.9
"""

from __future__ import annotations

from pathlib import Path

from kale_st.pair import METADATA_FILE, AsymmetricPair

METRICS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "Recall@100"}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Retrieval scores per model and, for several models, nDCG@10 relative to the first one."""
    base = next(iter(scores.values()))["ndcg@10"]
    ratio = len(scores) > 1
    rows = [
        [name, *(f"{s[key]:.4f}" for key in METRICS), *([percent(s["ndcg@10"], base)] if ratio else [])]
        for name, s in scores.items()
    ]
    return table(["model", *METRICS.values(), *(["% of first nDCG@10"] if ratio else [])], rows)


def percent(value: float, base: float) -> str:
    return f"{100 * value / base:.1f} %" if base else "-"


def latency_table(latency: dict[str, dict[str, float]]) -> str:
    rows = [
        [
            name,
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['forward_p50_ms']:.2f}",
            f"{r['queries_per_second']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['forward_speedup']:.2f}x",
            f"{r['throughput_speedup']:.2f}x",
        ]
        for name, r in latency.items()
    ]
    header = ["model", "p50 ms", "p95 ms", "forward p50 ms", "queries/s", "speedup", "forward", "throughput"]
    return table(header, rows)


def rounded(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 4) for key, value in scores.items()}


def latency_record(latency: dict[str, dict[str, float]], teacher: str, student: str) -> dict[str, float]:
    """The ``metadata["latency"]`` entry the model cards show."""
    return {
        "teacher_ms": round(latency[teacher]["p50_ms"], 2),
        "student_ms": round(latency[student]["p50_ms"], 2),
        "speedup": round(latency[student]["speedup"], 2),
        "threads": int(latency[student]["threads"]),
    }


def record(pair: AsymmetricPair, folder: str) -> None:
    """Rewrite a saved pair with its updated metadata (``kale_pair.json`` and the model cards)."""
    saved = Path(folder)
    pair.save(folder, overwrite=True, router=(saved / "router").is_dir(), onnx=(saved / "query" / "onnx").is_dir())
    print(f"recorded in {Path(folder) / METADATA_FILE} and the model cards")

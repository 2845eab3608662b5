"""Query-encoder latency: what a search pays per query, measured with the models interleaved in one run.

Timings on a shared machine drift; timing every model on the same query back to back (rotating the order)
keeps the drift out of the ratios, which are the numbers to report.

Example:
    >>> latency = query_latency({"teacher": teacher, "student": student}, queries)  # doctest: +SKIP
    >>> latency["student"]["speedup"]  # batch-1 p50 of the first model / this model's  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def query_latency(
    models: dict[str, SentenceTransformer],
    queries: list[str],
    *,
    batch_size: int = 32,
    warmup: int = 10,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency and batched throughput of ``encode_query`` for each model, the first being the baseline.

    Per model: ``p50_ms`` / ``p95_ms`` (batch-1 ``encode_query``, end to end), ``forward_p50_ms`` (batch-1
    forward pass only, tokenized beforehand), ``queries_per_second`` (``encode_query`` in batches of
    ``batch_size``), and ``speedup`` / ``forward_speedup`` / ``throughput_speedup`` against the first model.
    ``threads`` records ``torch.get_num_threads()``.
    """
    if not models:
        raise ValueError("Pass at least one model: models={'teacher': teacher, 'student': student}.")
    if not queries or not all(isinstance(q, str) for q in queries):
        raise ValueError("queries must be a non-empty list of strings.")
    names = list(models)
    encode = {n: [] for n in names}
    forward = {n: [] for n in names}
    batched = {n: 0.0 for n in names}
    with torch.inference_mode():
        for name in names:  # warm-up: allocator, kernels, tokenizer caches
            for query in queries[:warmup]:
                models[name].encode_query([query])
        for i, query in enumerate(queries):
            for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who goes first
                model = models[name]
                encode[name].append(_seconds(lambda: model.encode_query([query], convert_to_numpy=True)))
                features = _features(model, query)
                forward[name].append(_seconds(lambda: model(features)))
        for start in range(0, len(queries), batch_size):
            chunk = queries[start : start + batch_size]
            for name in names:
                batched[name] += _seconds(lambda: models[name].encode_query(chunk, batch_size=batch_size))
    base = names[0]
    results = {}
    for name in names:
        results[name] = {
            "p50_ms": 1000 * float(np.percentile(encode[name], 50)),
            "p95_ms": 1000 * float(np.percentile(encode[name], 95)),
            "forward_p50_ms": 1000 * float(np.percentile(forward[name], 50)),
            "queries_per_second": len(queries) / batched[name],
            "threads": torch.get_num_threads(),
            "queries": len(queries),
        }
    for name in names:
        r, b = results[name], results[base]
        r["speedup"] = b["p50_ms"] / r["p50_ms"]
        r["forward_speedup"] = b["forward_p50_ms"] / r["forward_p50_ms"]
        r["throughput_speedup"] = r["queries_per_second"] / b["queries_per_second"]
    return results


def _features(model: SentenceTransformer, query: str) -> dict[str, torch.Tensor]:
    """Tokenized batch-1 input for the forward pass, with the query prompt and task that ``encode_query`` applies
    (the task picks a Router model's query route)."""
    features = model.preprocess([query], prompt=model.prompts.get("query") or None, task="query")
    return {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def portable_args(args: object) -> dict[str, object]:
    """A benchmark's arguments (an ``argparse.Namespace``) to record in its results, with no path of this machine:
    paths under the working directory made relative, installed packages' from ``site-packages/`` on, the home ``~``.

    Example:
        >>> portable_args(argparse.Namespace(model="/home/me/.cache/m"))  # doctest: +SKIP
        {'model': '~/.cache/m'}
    """
    return {key: _portable(value) for key, value in vars(args).items()}


def _portable(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if not isinstance(value, (str, os.PathLike)) or not os.path.isabs(value):
        return str(value) if isinstance(value, os.PathLike) else value
    path = Path(value)
    if "site-packages" in path.parts:
        return Path(*path.parts[path.parts.index("site-packages") + 1:]).as_posix()
    if path.is_relative_to(Path.cwd()):
        return path.relative_to(Path.cwd()).as_posix()
    if path.is_relative_to(Path.home()):
        return f"~/{path.relative_to(Path.home()).as_posix()}"
    return path.name

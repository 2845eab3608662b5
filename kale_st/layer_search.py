"""``search``: a data-driven layer-selection strategy that measures candidate layer sets on sample queries.

Each candidate set of ``k`` layers is pruned (untrained) and encodes a sample of the queries. The ``probe`` score
asks how well the candidate could match the teacher after alignment, without training it: a ridge map from the
candidate's token states to the teacher's final token states is fitted on 3 of 4 folds of the queries, and the score
is the mean cosine, on the held-out fold, between the teacher's mean-pooled token states and the mapped candidate's
(averaged over the 4 folds). The ``cosine`` score is the plain cosine of the pruned candidate's embeddings to the
teacher's (no fit). The search is exhaustive when there are at most ``exhaustive_limit`` candidate sets, otherwise a
beam search that adds one layer at a time (``beam_width=1`` is greedy).

Candidates share the model's weights (only the module structure is copied) and each encodes the sample once: the
cost is one full forward pass (the teacher) plus one pruned pass per candidate set. On all-MiniLM-L6-v2 with the
default 256 queries (1 of 6 layers: 6 sets, 5 s; 2 of 6: 15 sets, 13 s; 3 of 6: 20 sets, 22 s on a 2-core CPU) that is
seconds, against minutes for one alignment. 256 rather than 128: on SciFact, 128 queries picked [0] for 1 layer
(probe 0.578 against 0.568 for [5]), 256 and 512 pick [5], the set that aligns far better (nDCG@10 0.603 against
0.487 after 5 epochs); 2 and 3 layers pick [0, 5] and [0, 4, 5] at all three sizes.

Options are keyword arguments; register a variant in one line:

    >>> from functools import partial
    >>> from kale_st.strategies import STRATEGIES
    >>> STRATEGIES["search-greedy"] = partial(search, exhaustive_limit=0, beam_width=1)
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

import torch

from kale_st.targets import ENCODE_BATCH_SIZE

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from kale_st.strategies import LayerContext

logger = logging.getLogger(__name__)

#: How ``search`` scores a candidate layer set (see the module docstring).
SCORES = ("probe", "cosine")
#: How many of the best candidate sets the lineage records.
REPORTED = 5


def search(
    num_keep: int,
    num_layers: int,
    context: LayerContext | None = None,
    *,
    score: str = "probe",
    sample_size: int = 256,
    max_words: int = 64,
    exhaustive_limit: int = 64,
    beam_width: int = 4,
    folds: int = 4,
    ridge: float = 0.1,
    seed: int = 0,
) -> list[int]:
    """Keep the ``num_keep`` layers whose pruned model best matches the full model on sample queries.

    Args:
        num_keep, num_layers: Layers to keep, of how many.
        context: The model and queries to measure on (:func:`kale_st.prune_layers` builds it from ``queries=``;
            :func:`kale_st.align` passes its alignment queries). Required.
        score: ``"probe"`` (cosine after a fitted linear map, the default) or ``"cosine"`` (no fit).
        sample_size: Queries measured (a seeded sample); each is cut to its first ``max_words`` words.
        exhaustive_limit: Score every candidate set when there are at most this many, else beam-search.
        beam_width: Sets kept at each step of the beam search.
        folds, ridge: Cross-validation folds and ridge strength (relative to the mean feature variance) of
            the ``probe`` fit.
        seed: Seed of the query sample.

    The chosen layers, the best scores and the search cost are left in ``context.reports`` and recorded by
    :func:`kale_st.prune_layers` in the pruned model's lineage (``pruning_info(model)["search"]``).
    """
    from kale_st import pruning  # imported here: pruning imports the strategy registry

    if context is None or not context.queries:
        raise ValueError(
            "strategy 'search' picks layers by measuring them on queries: pass queries=[...] to prune_layers "
            "(align passes its alignment queries), or use strategy='spread'."
        )
    if score not in SCORES:
        raise ValueError(f"Unknown search score {score!r}: use one of {list(SCORES)}.")
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width}: keep at least 1 candidate set per step.")
    key = (num_keep, num_layers)
    if key in context.reports:  # a Router pruned on every route asks once per transformer
        return list(context.reports[key]["kept_layers"])
    start = time.perf_counter()
    sample = _sample(context.queries, sample_size, max_words, seed)
    if score == "probe" and len(sample) < 2 * folds:
        raise ValueError(f"search with score='probe' needs at least {2 * folds} queries, got {len(sample)}.")
    required = pruning.required_layers(context.model, context.route)
    if num_keep < len(required):
        raise ValueError(f"This model must keep layer(s) {required}: keep at least {len(required)} layers.")
    free = [i for i in range(num_layers) if i not in required]
    output = "token_embeddings" if score == "probe" else "sentence_embedding"
    teacher = _encode(context.model, sample, context.route, output)

    scores: dict[tuple[int, ...], float] = {}

    def measure(keep: tuple[int, ...]) -> float:
        if keep not in scores:
            view = pruning.pruned_view(context.model, list(keep), context.route)
            candidate = _encode(view, sample, context.route, output)
            scores[keep] = _probe(candidate, teacher, folds, ridge) if score == "probe" else _cosine(candidate, teacher)
        return scores[keep]

    to_add = num_keep - len(required)
    if to_add == 0 or math.comb(len(free), to_add) <= exhaustive_limit:
        method = "exhaustive"
        for added in combinations(free, to_add):
            measure(tuple(sorted((*required, *added))))
    else:
        method = f"beam (width {beam_width})"
        beams = [tuple(required)]
        for _ in range(to_add):
            grown = sorted({tuple(sorted((*beam, i))) for beam in beams for i in free if i not in beam})
            beams = sorted(grown, key=measure, reverse=True)[:beam_width]  # stable: ties keep the lower indices
    finals = sorted((keep for keep in scores if len(keep) == num_keep), key=lambda keep: scores[keep], reverse=True)
    best = list(finals[0])
    context.reports[key] = {
        "kept_layers": best,
        "score": score,
        "method": method,
        "num_queries": len(sample),
        "candidates_scored": len(scores),
        "seconds": round(time.perf_counter() - start, 2),
        "best": [{"layers": list(keep), "score": round(scores[keep], 4)} for keep in finals[:REPORTED]],
    }
    logger.info("search kept layers %s of %d (%s, %d sets scored on %d queries in %.1f s): %s", best, num_layers,
                method, len(scores), len(sample), time.perf_counter() - start, context.reports[key]["best"])
    return best


def _sample(queries: Sequence[str], size: int, max_words: int, seed: int) -> list[str]:
    texts = list(queries)
    if len(texts) > size:
        texts = random.Random(seed).sample(texts, size)
    return [" ".join(text.split()[:max_words]) for text in texts]


def _encode(
    model: SentenceTransformer, texts: list[str], route: str | None, output: str
) -> list[torch.Tensor] | torch.Tensor:
    """Token states (a list, one unpadded tensor per text) or sentence embeddings, through the pruned route."""
    encode = model.encode_document if route == "document" else model.encode_query
    with torch.inference_mode():
        encoded = encode(texts, batch_size=ENCODE_BATCH_SIZE, output_value=output,
                         convert_to_tensor=output == "sentence_embedding", show_progress_bar=False)
    if output == "sentence_embedding":
        return encoded.float().cpu()
    return [tokens.float().cpu() for tokens in encoded]


def _probe(candidate: list[torch.Tensor], teacher: list[torch.Tensor], folds: int, ridge: float) -> float:
    """Held-out cosine of mean-pooled teacher token states and ridge-mapped candidate token states."""
    # Mean pooling is linear: pooling the mapped tokens is mapping the pooled tokens.
    pooled_x = torch.stack([tokens.mean(0) for tokens in candidate])
    pooled_y = torch.stack([tokens.mean(0) for tokens in teacher])
    cosines = []
    for fold in range(folds):
        train = [i for i in range(len(candidate)) if i % folds != fold]
        test = torch.arange(fold, len(candidate), folds)
        x, y = torch.cat([candidate[i] for i in train]), torch.cat([teacher[i] for i in train])
        x_mean, y_mean = x.mean(0), y.mean(0)
        centred = x - x_mean
        gram = centred.T @ centred
        gram.diagonal().add_(ridge * gram.trace() / len(gram))
        weights = torch.linalg.solve(gram, centred.T @ (y - y_mean))
        mapped = (pooled_x[test] - x_mean) @ weights + y_mean
        cosines.append(torch.nn.functional.cosine_similarity(mapped, pooled_y[test]).mean())
    return float(torch.stack(cosines).mean())


def _cosine(candidate: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(candidate, teacher).mean())

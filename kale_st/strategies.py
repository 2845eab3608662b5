"""Which layers to keep: a registry of layer-selection strategies.

A strategy maps ``(num_keep, num_layers)`` to the sorted indices of the layers to keep. A data-driven strategy
also takes ``context``, a :class:`LayerContext` with the model and sample queries (``search`` does). Adding
either kind is one line: ``STRATEGIES["name"] = function``.

Example:
    >>> from kale_st.strategies import select_layers
    >>> select_layers("spread", 2, 12)
    [0, 11]
    >>> select_layers("spread", 3, 12)
    [0, 5, 11]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from kale_st.layer_search import search

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Strategy = Callable[..., list[int]]


@dataclass
class LayerContext:
    """What a data-driven strategy may measure: the model being pruned and sample queries.

    ``route`` is the Router route being pruned (``None``: the whole model). A strategy may leave a JSON-friendly
    report in ``reports[(num_keep, num_layers)]``; :func:`kale_st.prune_layers` records it in the lineage.
    """

    model: SentenceTransformer
    queries: Sequence[str] | None = None
    route: str | None = None
    reports: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)


def spread(num_keep: int, num_layers: int) -> list[int]:
    """Keep the bottom and top layers and space the rest evenly (the KALE reference rule).

    Kept index ``i`` (of ``k``) is ``floor(i * (n - 1) / (k - 1))``: 2 of 12 -> [0, 11],
    3 of 12 -> [0, 5, 11], 2 of 6 -> [0, 5]. With ``k = 1`` only the bottom layer is kept.
    """
    if num_keep == 1:
        return [0]
    return [i * (num_layers - 1) // (num_keep - 1) for i in range(num_keep)]


def bottom(num_keep: int, num_layers: int) -> list[int]:
    """Keep the ``k`` lowest layers: 2 of 6 -> [0, 1]."""
    return list(range(num_keep))


def top(num_keep: int, num_layers: int) -> list[int]:
    """Keep the ``k`` highest layers: 2 of 6 -> [4, 5]."""
    return list(range(num_layers - num_keep, num_layers))


STRATEGIES: dict[str, Strategy] = {
    "spread": spread,
    "bottom": bottom,
    "top": top,
    "search": search,  # data-driven: kale_st.layer_search.search
}


def is_data_driven(strategy: Strategy) -> bool:
    """Whether ``strategy`` takes a ``context`` (the model and sample queries)."""
    return "context" in inspect.signature(strategy).parameters


def select_layers(strategy: str, num_keep: int, num_layers: int, context: LayerContext | None = None) -> list[int]:
    """Indices of the ``num_keep`` layers (of ``num_layers``) that ``strategy`` keeps.

    ``context`` is passed on to data-driven strategies only.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)}.")
    function = STRATEGIES[strategy]
    if is_data_driven(function):
        return function(num_keep, num_layers, context=context)
    return function(num_keep, num_layers)

"""Which layers to keep: a registry of layer-selection strategies.

A strategy maps ``(num_keep, num_layers)`` to the sorted indices of the layers to keep.
Adding one is one line: ``STRATEGIES["name"] = function``.

Example:
    >>> from kale_st.strategies import select_layers
    >>> select_layers("spread", 2, 12)
    [0, 11]
    >>> select_layers("spread", 3, 12)
    [0, 5, 11]
"""

from __future__ import annotations

from typing import Callable

Strategy = Callable[[int, int], list[int]]


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
}


def select_layers(strategy: str, num_keep: int, num_layers: int) -> list[int]:
    """Indices of the ``num_keep`` layers (of ``num_layers``) that ``strategy`` keeps."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: use one of {sorted(STRATEGIES)}.")
    return STRATEGIES[strategy](num_keep, num_layers)

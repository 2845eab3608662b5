"""Mixed precision for ``align``: bfloat16 where the hardware computes it natively, float32 elsewhere.

Under ``"bf16"`` the teacher encodes its targets and the student trains under ``torch.autocast`` (bfloat16 matrix
products, float32 weights, float32 loss): on 2 CPU cores with AVX512-BF16, ``align`` ran 1.5x faster with the same
validation quality (README "Defaults that transfer"), and all-mpnet-base-v2's bfloat16 targets were within cosine
0.99998 of its float32 ones. The saved student is float32 either way.

Example:
    >>> import torch
    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    >>> with autocast("bf16", torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

#: ``"auto"``: ``"bf16"`` where :func:`native_bf16` holds, else ``"fp32"``.
PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 products in hardware (a CPU with AVX512-BF16 or AMX, a CUDA GPU with bf16).

    Elsewhere bfloat16 is emulated and slower than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(check() for check in checks if check is not None)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {list(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` in bfloat16 on ``device`` for ``"bf16"``; nothing for ``"fp32"``."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

"""Where each encoder architecture keeps its stack of transformer layers.

A registry keyed by the Hugging Face ``config.model_type``; adding an architecture is one line.
Unknown architectures fall back to the only ``nn.ModuleList`` whose length equals the layer count.

Example:
    >>> ARCHITECTURES["my-bert"] = LayerStack("encoder.layer")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerStack:
    """The dotted path of the layer list inside the base model, and layers that may never be dropped."""

    path: str
    required_layers: tuple[int, ...] = ()


ARCHITECTURES: dict[str, LayerStack] = {
    "bert": LayerStack("encoder.layer"),
    "roberta": LayerStack("encoder.layer"),
    "xlm-roberta": LayerStack("encoder.layer"),
    "mpnet": LayerStack("encoder.layer"),
    "electra": LayerStack("encoder.layer"),
    "deberta-v2": LayerStack("encoder.layer"),
    "distilbert": LayerStack("transformer.layer"),
    # ModernBERT's layer 0 is built without an attention norm: any other layer in its place would
    # lose its norm weights on reload.
    "modernbert": LayerStack("layers", required_layers=(0,)),
}


def find_layers(model: PreTrainedModel) -> tuple[nn.Module, str, LayerStack]:
    """Return ``(parent module, attribute name, stack)`` of the model's transformer layer list."""
    model_type = model.config.model_type
    stack = ARCHITECTURES.get(model_type)
    if stack is None:
        stack = _guess_stack(model)
        logger.warning("No layer registry entry for %r; pruning the layer list found at %r.", model_type, stack.path)
    parent_path, _, name = stack.path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    layers = getattr(parent, name, None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"Expected a layer list at {stack.path!r} in {type(model).__name__}, found {type(layers).__name__}. "
            f"Fix the entry for {model_type!r} in kale_st.architectures.ARCHITECTURES."
        )
    return parent, name, stack


def _guess_stack(model: PreTrainedModel) -> LayerStack:
    num_layers = model.config.num_hidden_layers
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name
    ]
    if len(candidates) != 1:
        raise ValueError(
            f"Cannot find the transformer layer list of {type(model).__name__} (model_type {model.config.model_type!r}): "
            f"{len(candidates)} candidate lists of length {num_layers}. Supported architectures: "
            f"{', '.join(sorted(ARCHITECTURES))}. Add an entry to kale_st.architectures.ARCHITECTURES "
            "naming the path of its layer list."
        )
    return LayerStack(candidates[0])

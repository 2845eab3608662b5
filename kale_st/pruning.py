"""Structural layer pruning of sentence-transformers models.

Example:
    >>> from sentence_transformers import SentenceTransformer
    >>> import kale_st
    >>> model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> student = kale_st.prune_layers(model, 2)  # keeps layers [0, 5]  # doctest: +SKIP
    >>> kale_st.pruning_info(student)["kept_layers"]  # doctest: +SKIP
    [0, 5]
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router, Transformer
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from torch import nn

from kale_st.architectures import find_layers
from kale_st.model_card import KALEModelCardData, is_hub_id
from kale_st.strategies import LayerContext, select_layers

#: Name of the Hugging Face config attribute that records how a model was pruned (survives save/load).
LINEAGE_KEY = "kale_st_pruning"
#: A model's own Hub id in its card's usage snippet: ``SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')``.
_CARD_SNIPPET = re.compile(r"""SentenceTransformer\(\s*["']([\w.-]+/[\w.-]+)["']""")
#: A Hub cache snapshot folder: ``.../models--{namespace}--{name}/snapshots/{commit}``.
_HUB_SNAPSHOT = re.compile(r"models--(?P<namespace>[\w.-]+?)--(?P<name>[\w.-]+)")
_LAYER_INDEX_ATTRIBUTES = ("layer_idx", "layer_id", "layer_index")
_NOT_PER_LAYER = {"architectures"}


def prune_layers(
    model: SentenceTransformer,
    layers: int | Sequence[int],
    *,
    strategy: str = "spread",
    route: str | None = None,
    queries: Sequence[str] | None = None,
    base_model: str | None = None,
) -> SentenceTransformer:
    """Return a copy of ``model`` that keeps only some of its transformer layers.

    Args:
        model: The model to prune. It is not modified.
        layers: How many layers to keep (chosen by ``strategy``) or the exact indices to keep.
        strategy: A name in :data:`kale_st.strategies.STRATEGIES` (``spread``, ``bottom``, ``top``, ``search``);
            ignored when ``layers`` lists indices.
        route: For a ``Router`` model, the route to prune (for example ``"query"``); ``None`` prunes
            every transformer in the model.
        queries: Sample queries for a data-driven strategy (``search`` measures candidate layer sets on them);
            ignored by the others.
        base_model: The Hugging Face Hub id ``model`` is an unchanged copy of (``"sentence-transformers/
            all-MiniLM-L6-v2"`` for a local download); ``None`` infers it (see :func:`source_name`).

    The copy starts with a fresh model card and records its lineage (source, original layer count,
    kept indices of the original) in the transformer config; read it with :func:`pruning_info`. The source is
    named by its Hub id, or by its folder name when it has none: never by a local path.

    Example:
        >>> student = prune_layers(model, 2)                   # doctest: +SKIP
        >>> student = prune_layers(model, [0, 3, 5])           # doctest: +SKIP
        >>> asym = prune_layers(router_model, 2, route="query")  # doctest: +SKIP
        >>> searched = prune_layers(model, 2, strategy="search", queries=train_queries[:256])  # doctest: +SKIP
        >>> local = SentenceTransformer("./minilm")  # a copy of sentence-transformers/all-MiniLM-L6-v2  # doctest: +SKIP
        >>> student = prune_layers(local, 2, base_model="sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    """
    _check_arguments(model, base_model)
    context = LayerContext(model, queries, route)
    modules = _transformer_modules(model, route)
    plans = [(path, _kept_indices(module, layers, strategy, context)) for path, module in modules]
    pruned = copy.deepcopy(model)
    label = strategy if isinstance(layers, int) else "indices"
    source = base_model or source_name(model)
    _apply(pruned, plans, route, label, source, context.reports if isinstance(layers, int) else {})
    pruned._model_card_text = None
    pruned.model_card_data = KALEModelCardData(kale=pruning_info(pruned, route) or {})
    lineage_source = pruned.model_card_data.kale.get("source_model")
    if is_hub_id(lineage_source):
        pruned.model_card_data.base_model = lineage_source
    pruned.model_card_data.register_model(pruned)
    return pruned


def check_layers(
    model: SentenceTransformer, layers: int | Sequence[int], *, route: str | None = None, base_model: str | None = None
) -> None:
    """Raise the error :func:`prune_layers` would raise for ``layers`` and ``base_model``, without copying ``model``.

    Example:
        >>> check_layers(model, 7)  # a 6-layer model  # doctest: +SKIP
        ValueError: layers=7: the model already has 6 layers; keep fewer (1 <= layers < 6).
    """
    _check_arguments(model, base_model)
    for _, module in _transformer_modules(model, route):
        _kept_indices(module, layers, "spread")  # the count and the indices; the strategy does not matter here


def _check_arguments(model: SentenceTransformer, base_model: str | None) -> None:
    if not isinstance(model, SentenceTransformer):
        raise ValueError(f"prune_layers expects a SentenceTransformer, got {type(model).__name__}.")
    if base_model is not None and not _is_repo_id(base_model):
        raise ValueError(
            f"base_model={base_model!r} is not a Hugging Face model id: pass the namespace/name the model was "
            "downloaded from (for example 'sentence-transformers/all-MiniLM-L6-v2'), or None."
        )


def pruned_view(model: SentenceTransformer, layers: Sequence[int], route: str | None = None) -> SentenceTransformer:
    """A pruned copy that shares its weights with ``model`` (only the module structure is copied): cheap, for
    measuring a candidate layer set (``search``), not for training or saving."""
    plans = [(path, _kept_indices(module, layers, "indices")) for path, module in _transformer_modules(model, route)]
    shared: list[Any] = [*model.parameters(), *model.buffers(), model.model_card_data]
    shared += [getattr(m, name) for m in model.modules() for name in ("processor", "tokenizer") if hasattr(m, name)]
    view = copy.deepcopy(model, {id(thing): thing for thing in shared if thing is not None})
    _apply(view, plans, route, "indices", "", {})
    return view


def required_layers(model: SentenceTransformer, route: str | None = None) -> list[int]:
    """Layer indices that pruning must keep (ModernBERT's layer 0), for every transformer it would prune."""
    required: set[int] = set()
    for _, module in _transformer_modules(model, route):
        required.update(find_layers(module.auto_model)[2].required_layers)
    return sorted(required)


def pruning_info(model: SentenceTransformer, route: str | None = None) -> dict[str, Any] | None:
    """The lineage recorded by :func:`prune_layers`, or ``None`` for a model that was never pruned.

    Keys: ``source_model``, ``num_layers`` (of the source), ``kept_layers`` (indices in the source), ``strategy``;
    with ``strategy="search"`` also ``search``: its score, method, cost and best candidate sets (source indices).
    A static student (:func:`kale_st.static.static_student`) has ``kept_layers=[]``, ``strategy="static"``.
    """
    static = _static_embedding(model, route)
    if static is not None:
        info = getattr(static, LINEAGE_KEY, None)
        return dict(info) if info is not None else None
    for _, module in _transformer_modules(model, route):
        info = getattr(module.auto_model.config, LINEAGE_KEY, None)
        if info is not None:
            return dict(info)
    return None


def restore_lineage(model: SentenceTransformer, lineage: dict[str, Any]) -> None:
    """Record ``lineage`` (a :func:`pruning_info` dict) in every transformer of ``model`` and in its model card: a
    student rebuilt from explicit indices then reads as the one it rebuilds (its strategy, its layer search)."""
    for _, module in _transformer_modules(model, None):
        setattr(module.auto_model.config, LINEAGE_KEY, dict(lineage))
    model.model_card_data.kale = dict(lineage)


def num_layers(model: SentenceTransformer, route: str | None = None) -> int:
    """The number of transformer layers of ``model`` (of ``route`` for a Router model); 0 for static embeddings."""
    if _static_embedding(model, route) is not None:
        return 0
    (_, module), *_ = _transformer_modules(model, route)
    return module.auto_model.config.num_hidden_layers


def _static_embedding(model: SentenceTransformer, route: str | None) -> StaticEmbedding | None:
    """The ``StaticEmbedding`` of ``model`` (of ``route`` for a Router model), if it has no transformer."""
    modules = list(model)
    if modules and isinstance(modules[0], Router):
        modules = [m for name, seq in modules[0].sub_modules.items() if route in (None, name) for m in seq]
    return next((m for m in modules if isinstance(m, StaticEmbedding)), None)


def _transformer_modules(model: SentenceTransformer, route: str | None) -> list[tuple[str, Transformer]]:
    """``(submodule path, module)`` of every Transformer to prune, in model order."""
    found: list[tuple[str, Transformer]] = []
    routers = [(name, m) for name, m in model.named_children() if isinstance(m, Router)]
    if route is not None and not routers:
        raise ValueError(f"route={route!r} applies to a Router model; this model has no Router. Pass route=None.")
    for name, module in model.named_children():
        if isinstance(module, Transformer):
            found.append((name, module))
        elif isinstance(module, Router):
            if route is not None and route not in module.sub_modules:
                raise ValueError(
                    f"Unknown route {route!r}: this Router has routes {list(module.sub_modules)}. Pass one of them."
                )
            for route_name, sequence in module.sub_modules.items():
                if route is None or route_name == route:
                    found += [
                        (f"{name}.sub_modules.{route_name}.{i}", m)
                        for i, m in enumerate(sequence)
                        if isinstance(m, Transformer)
                    ]
    if not found:
        raise ValueError(
            "This model has no sentence_transformers Transformer module to prune"
            + (f" in route {route!r}" if route else "")
            + ": layer pruning needs a Hugging Face transformer encoder (static embeddings have no layers)."
        )
    return found


def _apply(
    model: SentenceTransformer,
    plans: list[tuple[str, list[int]]],
    route: str | None,
    strategy: str,
    source: str,
    reports: dict[tuple[int, int], dict[str, Any]],
) -> None:
    """Prune each planned transformer of ``model`` in place (a route's module shared with another route is split);
    ``reports`` are a data-driven strategy's, by ``(kept, total)`` layer counts, for the lineage."""
    for path, keep in plans:
        module = model.get_submodule(path)
        if route is not None and _is_shared(model, path, module):
            module = copy.deepcopy(module)
            parent_path, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent_path), name, module)
        report = reports.get((len(keep), module.auto_model.config.num_hidden_layers))
        _prune_transformer(module, keep, strategy, source, report)


def _kept_indices(
    module: Transformer, layers: int | Sequence[int], strategy: str, context: LayerContext | None = None
) -> list[int]:
    hf_model = module.auto_model
    _, _, stack = find_layers(hf_model)
    total = hf_model.config.num_hidden_layers
    if isinstance(layers, bool) or not isinstance(layers, (int, Sequence)) or isinstance(layers, str):
        raise ValueError(f"layers must be an int (how many to keep) or a sequence of indices, got {layers!r}.")
    if isinstance(layers, int):
        if layers <= 0:
            raise ValueError(f"layers={layers}: keep at least 1 layer (1 <= layers < {total}).")
        if layers >= total:
            raise ValueError(
                f"layers={layers}: the model already has {total} layers; keep fewer (1 <= layers < {total})."
            )
        keep = select_layers(strategy, layers, total, context)
    else:
        keep = list(layers)
        if not keep:
            raise ValueError("layers is empty: list at least one layer index to keep.")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in keep):
            raise ValueError(f"layers must hold integer indices, got {keep!r}.")
        if len(set(keep)) != len(keep):
            raise ValueError(f"layers {keep} has duplicate indices: list each layer to keep once.")
        bad = [i for i in keep if not 0 <= i < total]
        if bad:
            raise ValueError(f"Layer indices {bad} are out of range: this model has layers 0..{total - 1}.")
        if len(keep) == total:
            raise ValueError(f"layers {keep} keeps all {total} layers: the model already has {total} layers.")
        keep = sorted(keep)
    missing = [i for i in stack.required_layers if i not in keep]
    if missing:
        raise ValueError(
            f"{hf_model.config.model_type} must keep layer(s) {missing} (kept: {keep}): "
            "include them in the indices or use strategy='spread' or 'bottom'."
        )
    return keep


def _prune_transformer(
    module: Transformer, keep: list[int], strategy: str, source: str, report: dict[str, Any] | None = None
) -> None:
    hf_model = module.auto_model
    config = hf_model.config
    parent, name, _ = find_layers(hf_model)
    old_layers = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(old_layers[i] for i in keep))
    for new_index, layer in enumerate(getattr(parent, name)):
        for submodule in layer.modules():
            for attribute in _LAYER_INDEX_ATTRIBUTES:
                if isinstance(getattr(submodule, attribute, None), int):
                    setattr(submodule, attribute, new_index)
    total = config.num_hidden_layers
    for key, value in config.to_dict().items():
        if key not in _NOT_PER_LAYER and isinstance(value, list) and len(value) == total:
            setattr(config, key, [value[i] for i in keep])
    config.num_hidden_layers = len(keep)
    previous = getattr(config, LINEAGE_KEY, None)
    in_source = (lambda indices: [previous["kept_layers"][i] for i in indices]) if previous else list
    lineage = {
        "source_model": previous["source_model"] if previous else source,
        "num_layers": previous["num_layers"] if previous else total,
        "kept_layers": in_source(keep),
        "strategy": strategy,
    }
    if report is not None:  # what a data-driven strategy measured; its candidate layer sets in source indices
        lineage["search"] = {key: value for key, value in report.items() if key != "kept_layers"}
        if "best" in report:
            lineage["search"]["best"] = [{**entry, "layers": in_source(entry["layers"])} for entry in report["best"]]
    setattr(config, LINEAGE_KEY, lineage)


def _is_shared(model: nn.Module, path: str, module: nn.Module) -> bool:
    return any(m is module and p != path for p, m in model.named_modules(remove_duplicate=False))


def source_name(model: SentenceTransformer) -> str:
    """The name the lineage gives ``model``: its Hugging Face Hub id where the model says it, else its folder name.

    The Hub id is, in order: the card's ``model_id``; the id sentence-transformers recorded when it loaded the model
    from the Hub (``model_card_data.base_model``, unless the model was trained since); a Hub cache snapshot folder
    (``models--{namespace}--{name}/snapshots/...``); a transformer loaded by id; the single id of the loaded card's
    usage snippet (``SentenceTransformer('namespace/name')``, unless trained since). A local path is never returned.

    Example:
        >>> source_name(SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2"))  # doctest: +SKIP
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    card = model.model_card_data
    text = getattr(model, "_model_card_text", None) or ""  # the card of the folder it was loaded from
    tags = [*(card.tags or []), *_card_tags(text)]
    trained = "generated_from_trainer" in tags  # then a card's Hub id is the model it was trained from
    if card.model_id:
        return card.model_id
    if card.base_model and not trained:
        return card.base_model
    (_, module), *_ = _transformer_modules(model, None)
    path = str(module.auto_model.config._name_or_path or "")
    snapshot = [m for part in Path(path).parts if (m := _HUB_SNAPSHOT.fullmatch(part))]
    if snapshot:
        return f"{snapshot[-1]['namespace']}/{snapshot[-1]['name']}"
    if is_hub_id(path):
        return path
    named = set(_CARD_SNIPPET.findall(text))
    if len(named) == 1 and not trained:
        return named.pop()
    folder = Path(path)
    return folder.parent.name if re.fullmatch(r"\d+_\w+", folder.name) else folder.name  # 0_Transformer: the model's


def _card_tags(text: str) -> list[str]:
    """The tags in a model card's front matter (none without one, or with one that does not parse)."""
    if not text.startswith("---"):
        return []
    try:
        return list(ModelCard(text).data.tags or [])
    except (ValueError, yaml.YAMLError):
        return []


def _is_repo_id(name: str) -> bool:
    """Whether ``name`` reads ``namespace/name`` as the Hub allows (a local folder of that name does not matter)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1

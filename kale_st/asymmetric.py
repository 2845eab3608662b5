"""Asymmetric bi-encoders: a shallow query route and a full document route behind one ``Router``.

The KALE paper's first finding: a query encoder made shallow *before* training, trained against a full document
encoder, loses little. :func:`asymmetric` builds that model from any trained SentenceTransformer, ready for
``SentenceTransformerTrainer`` and any sentence-transformers retrieval loss; :func:`router_mapping` tells the
Trainer which dataset column is the query. With the document route frozen (the default) the existing document
index stays valid. ``kale_st.align`` then compresses the trained query route further ("asymmetric, then KALE").

Example:
    >>> from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    >>> from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    >>> model = kale_st.asymmetric(SentenceTransformer("all-MiniLM-L6-v2"), query_layers=2)  # doctest: +SKIP
    >>> pairs = Dataset.from_dict({"query": [...], "positive": [...]})  # doctest: +SKIP
    >>> args = SentenceTransformerTrainingArguments("out", router_mapping=kale_st.router_mapping(pairs))  # doctest: +SKIP
    >>> SentenceTransformerTrainer(model, args, train_dataset=pairs,
    ...                            loss=MultipleNegativesRankingLoss(model)).train()  # doctest: +SKIP
    >>> pair = kale_st.align(model, queries, layers=1)  # KALE on top; documents still the original's  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from datasets import Dataset, DatasetDict, Value
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router, Transformer
from torch import nn

from kale_st.model_card import KALEModelCardData
from kale_st.pair import with_modules
from kale_st.pruning import prune_layers, pruning_info


def asymmetric(
    model: SentenceTransformer,
    *,
    query_layers: int | Sequence[int],
    document_layers: int | Sequence[int] | None = None,
    strategy: str = "spread",
    freeze_document: bool = True,
) -> SentenceTransformer:
    """A copy of ``model`` with a ``Router``: a pruned ``query`` route and a ``document`` route.

    Each route holds its own copy of the model's modules up to the last transformer; the modules after it
    (pooling, normalization, ...) come after the Router and are shared, as the source model had them.

    Args:
        model: A trained SentenceTransformer without a Router. It is not modified.
        query_layers: Layers the query route keeps: a count (picked by ``strategy``) or exact indices.
        document_layers: Layers the document route keeps; ``None`` keeps the whole original (its index stays valid).
        strategy: Layer-selection strategy for counts (see :data:`kale_st.STRATEGIES`).
        freeze_document: Freeze the document route (see :func:`freeze_route`), so that training moves only the
            query route and the documents embedded by the original stay valid.

    Returns:
        A SentenceTransformer whose ``encode_query`` runs the query route and ``encode_document`` the document route.
    """
    if not isinstance(model, SentenceTransformer):
        raise ValueError(f"asymmetric expects a SentenceTransformer, got {type(model).__name__}.")
    modules = list(model)
    if any(isinstance(module, Router) for module in modules):
        raise ValueError(
            "This model already has a Router: prune its query route with "
            "kale_st.prune_layers(model, layers, route='query') instead."
        )
    transformers = [i for i, module in enumerate(modules) if isinstance(module, Transformer)]
    if not transformers:
        raise ValueError(
            "This model has no sentence_transformers Transformer module: an asymmetric model needs a transformer "
            "encoder to prune (static embeddings have no layers)."
        )
    route, shared = modules[: transformers[-1] + 1], modules[transformers[-1] + 1 :]
    router = Router.for_query_document(query_modules=copy.deepcopy(route), document_modules=copy.deepcopy(route))
    combined = with_modules(model, [router, *copy.deepcopy(shared)])
    combined = prune_layers(combined, query_layers, strategy=strategy, route="query")
    if document_layers is not None:
        combined = prune_layers(combined, document_layers, strategy=strategy, route="document")
    combined.model_card_data = KALEModelCardData(kind="router", kale=pruning_info(combined, "query") or {})
    combined.model_card_data.register_model(combined)
    if freeze_document:
        freeze_route(combined, "document")
    return combined


def freeze_route(model: SentenceTransformer, route: str = "document") -> None:
    """Freeze one route of a Router model in place: its weights get no gradient and it always runs in eval mode.

    Eval mode (no dropout) makes the frozen route give, during training, the very embeddings it gives at
    inference, so a loss compares queries against the documents as they are indexed. The freeze lives in memory:
    a model loaded from disk starts unfrozen.
    """
    routers = [module for module in model if isinstance(module, Router)]
    if not routers:
        raise ValueError("freeze_route applies to a Router model (see kale_st.asymmetric); this model has none.")
    router = routers[0]
    if route not in router.sub_modules:
        raise ValueError(f"Unknown route {route!r}: this Router has routes {list(router.sub_modules)}.")
    for module in router.sub_modules[route]:
        module.requires_grad_(False)
        module.eval()
        module.register_forward_pre_hook(_stay_in_eval_mode)


def router_mapping(
    dataset: Dataset | DatasetDict | Mapping[str, Dataset], query_column: str | None = None
) -> dict[str, str] | dict[str, dict[str, str]]:
    """The ``router_mapping`` training argument for a query/document Router model and ``dataset``.

    The query column (``query_column``, else ``query``, ``anchor`` or ``question`` if present, else the first text
    column) goes to the ``query`` route; every other text column (positives, negatives) to the ``document`` route.
    Label and score columns are not text and are left out. A ``DatasetDict`` gives one mapping per dataset.

    Example:
        >>> router_mapping(Dataset.from_dict({"anchor": ["q"], "positive": ["d"], "negative": ["n"]}))
        {'anchor': 'query', 'positive': 'document', 'negative': 'document'}
    """
    if isinstance(dataset, Mapping):
        return {name: router_mapping(part, query_column) for name, part in dataset.items()}
    if not isinstance(dataset, Dataset):
        raise ValueError(f"router_mapping expects a datasets.Dataset or DatasetDict, got {type(dataset).__name__}.")
    texts = [
        name
        for name, feature in dataset.features.items()
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string")
    ]
    if query_column is None:
        query_column = next((name for name in ("query", "anchor", "question") if name in texts), None)
        query_column = query_column or (texts[0] if texts else None)
    if query_column not in texts:
        raise ValueError(
            f"The dataset has no text column {query_column!r} for queries (text columns: {texts}): "
            "pass query_column=<the column that holds the queries>."
        )
    if len(texts) < 2:
        raise ValueError(
            f"The dataset has only the text column {texts}: a retrieval loss needs a query column and at least "
            "one document column (for example 'query' and 'positive')."
        )
    return {name: "query" if name == query_column else "document" for name in texts}


def _stay_in_eval_mode(module: nn.Module, args: tuple) -> None:
    if module.training:
        module.eval()

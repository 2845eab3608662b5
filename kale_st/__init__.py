"""kale_st: KALE query-encoder compression for sentence-transformers (arXiv 2304.01016).

Example:
    >>> import kale_st
    >>> pair = kale_st.align(model, train_queries, layers=2)  # doctest: +SKIP
    >>> pair.encode_query(["a question"])  # doctest: +SKIP
"""

from kale_st.align import align
from kale_st.asymmetric import asymmetric, freeze_route, router_mapping
from kale_st.loss import KALELoss
from kale_st.pair import AsymmetricPair
from kale_st.pruning import num_layers, prune_layers, pruning_info
from kale_st.queries import pseudo_queries
from kale_st.strategies import STRATEGIES, LayerContext

__version__ = "0.1.0"
__all__ = [
    "STRATEGIES",
    "AsymmetricPair",
    "KALELoss",
    "LayerContext",
    "align",
    "asymmetric",
    "freeze_route",
    "num_layers",
    "prune_layers",
    "pruning_info",
    "pseudo_queries",
    "router_mapping",
]

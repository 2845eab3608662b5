"""kale_st: KALE query-encoder compression for sentence-transformers (arXiv 2304.01016)."""

from kale_st.pruning import num_layers, prune_layers, pruning_info
from kale_st.strategies import STRATEGIES

__version__ = "0.1.0"
__all__ = ["STRATEGIES", "num_layers", "prune_layers", "pruning_info"]

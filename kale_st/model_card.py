"""Model card data for KALE query encoders, rendered with the templates in ``model_cards/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

# Installed from a wheel, the templates sit in kale_st/model_cards/; in a source checkout, in ../model_cards/.
_PACKAGE = Path(__file__).parent
TEMPLATES = _PACKAGE / "model_cards" if (_PACKAGE / "model_cards").is_dir() else _PACKAGE.parent / "model_cards"


@dataclass
class KALEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data plus ``kale``: the lineage recorded by :func:`kale_st.prune_layers`."""

    kale: dict[str, Any] = field(default_factory=dict)
    template_path: Path = field(default=TEMPLATES / "query.md", init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.add_tags(["kale", "query-encoder", "pruned"])

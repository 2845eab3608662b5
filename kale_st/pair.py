"""AsymmetricPair: a small query encoder that searches the index of an unchanged document encoder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from torch import Tensor

METADATA_FILE = "kale_pair.json"


@dataclass
class AsymmetricPair:
    """Two models that work together: ``query_model`` encodes queries, ``document_model`` documents.

    Example:
        >>> pair = kale_st.align(model, queries)  # doctest: +SKIP
        >>> scores = pair.similarity(pair.encode_query(["a question"]), pair.encode_document(["a passage"]))  # doctest: +SKIP
    """

    query_model: SentenceTransformer
    document_model: SentenceTransformer
    metadata: dict[str, Any] = field(default_factory=dict)

    def encode_query(self, queries: str | list[str], **kwargs: Any) -> Any:
        return self.query_model.encode_query(queries, **kwargs)

    def encode_document(self, documents: str | list[str], **kwargs: Any) -> Any:
        return self.document_model.encode_document(documents, **kwargs)

    def similarity(self, query_embeddings: Any, document_embeddings: Any) -> Tensor:
        return self.document_model.similarity(query_embeddings, document_embeddings)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write ``query/`` and ``document/`` (plain sentence-transformers folders) and ``kale_pair.json``.

        The folder is written next to ``path`` and renamed into place, so a failed save leaves nothing behind.
        """
        target = Path(path)
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise ValueError(f"{str(target)!r} exists and is not empty: pass overwrite=True or a new folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            self.query_model.save(str(scratch / "query"))
            self.document_model.save(str(scratch / "document"))
            (scratch / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n")
            if target.exists():
                shutil.rmtree(target)
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @classmethod
    def load(cls, path: str | os.PathLike, **model_kwargs: Any) -> AsymmetricPair:
        """Load a pair written by :meth:`save`; ``model_kwargs`` go to both ``SentenceTransformer`` calls."""
        folder = Path(path)
        if not (folder / METADATA_FILE).is_file():
            raise ValueError(f"{str(folder)!r} has no {METADATA_FILE}: it is not a folder written by AsymmetricPair.save.")
        return cls(
            query_model=SentenceTransformer(str(folder / "query"), **model_kwargs),
            document_model=SentenceTransformer(str(folder / "document"), **model_kwargs),
            metadata=json.loads((folder / METADATA_FILE).read_text()),
        )

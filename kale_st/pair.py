"""AsymmetricPair: a small query encoder that searches the index of an unchanged document encoder."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router
from torch import Tensor, nn

from kale_st.model_card import pair_model_card

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

logger = logging.getLogger(__name__)

METADATA_FILE = "kale_pair.json"
#: Name (plus the image's suffix) of the plot copied into the query and router folders.
PLOT_NAME = "kale_plot"
#: Prompt names ``encode_query`` / ``encode_document`` look for, in order (as sentence-transformers does).
_TASK_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}


@dataclass
class AsymmetricPair:
    """Two models that work together: ``query_model`` encodes queries, ``document_model`` documents.

    ``metadata`` is a plain JSON dict of how the pair was made, saved as ``kale_pair.json`` and shown in the model
    cards. :func:`kale_st.align` fills ``source_model`` (the original model, teacher and document encoder: its Hub id,
    or the folder name of a local-only model, never a local path), ``num_layers`` (of the source), ``kept_layers``,
    ``strategy``, ``loss``, ``loss_config`` (``{"temperature": 0.2}`` for KALELoss), ``num_queries`` (training data
    size), ``real_query_share`` and ``real_query_copies`` (how many times each real query was trained on), ``epochs``, ``batch_size``, ``learning_rate``, ``seed``, ``training_steps``, ``world_size``,
    ``alignment_seconds`` and, given held-out queries, ``agreement``. Optional keys that other code fills in:

    - ``source_revision``: Hub commit of ``source_model`` (if absent: the document model's
      ``model_card_data.base_model_revision``, which sentence-transformers sets when it loads from the Hub).
    - ``evaluation``: ``{"dataset": "SciFact test", "teacher": {"ndcg@10": .., "mrr@10": .., "recall@100": ..},
      "student": {...}}``; the student's scores are those of its queries against the document encoder's documents.
    - ``latency``: query encoding, ``{"teacher_ms": .., "student_ms": .., "speedup": .., "threads": ..}``.
    - ``plot``: path of an image; copied into the query and router folders and shown in their cards
      (``kale_pair.json`` names the copy, ``query/kale_plot.png``, not the original path).
    - ``onnx``: the ONNX files of ``query/`` (:meth:`save` with ``onnx=True`` sets it, and drops it without):
      ``{"fp32": "onnx/model.onnx", "int8": "onnx/model_quint8_avx2.onnx", "quantization": "avx2"}``, optionally
      with ``"latency"``: batch-1 ``encode_query`` p50 from one run, ``{"teacher_ms": .., "student_ms": ..,
      "fp32_ms": .., "int8_ms": .., "threads": ..}`` (torch teacher, torch student, ONNX float32, ONNX int8),
      shown in the query card.

    Example:
        >>> pair = kale_st.align(model, queries)  # doctest: +SKIP
        >>> scores = pair.similarity(pair.encode_query(["a query"]), pair.encode_document(["a text"]))  # doctest: +SKIP
        >>> pair.metadata["latency"] = {"teacher_ms": 8.1, "student_ms": 2.9, "speedup": 2.8}  # doctest: +SKIP
        >>> pair.save("kale-pair", router=True)  # doctest: +SKIP
        >>> pair.push_to_hub("org/kale-query-2l")  # doctest: +SKIP
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

    def to_router(self) -> SentenceTransformer:
        """One model for both sides: a ``Router`` sends queries to the query model, documents to the document model.

        Each route holds deep copies of its model's whole pipeline (transformer, pooling, normalize, ...; a Router
        model contributes its own ``query`` / ``document`` route and the modules after it), so ``encode_query`` and
        ``encode_document`` give the pair's embeddings and the pair's models are not touched.

        Example:
            >>> model = pair.to_router()  # doctest: +SKIP
            >>> model.encode_query(["a question"])  # the pruned query encoder  # doctest: +SKIP
        """
        if self.query_model.truncate_dim != self.document_model.truncate_dim:
            raise ValueError(
                f"The query model truncates to {self.query_model.truncate_dim} dimensions and the document model to "
                f"{self.document_model.truncate_dim}: set the same truncate_dim on both."
            )
        router = Router.for_query_document(
            query_modules=copy.deepcopy(task_modules(self.query_model, "query")),
            document_modules=copy.deepcopy(task_modules(self.document_model, "document")),
        )
        return SentenceTransformer(
            modules=[router],
            device=str(self.document_model.device),
            prompts={task: _task_prompt(model, task) for task, model in self._models().items()},
            similarity_fn_name=self.document_model.similarity_fn_name,
            truncate_dim=self.document_model.truncate_dim,
        )

    def save(
        self, path: str | os.PathLike, overwrite: bool = False, router: bool = False, onnx: bool | str = False
    ) -> None:
        """Write ``query/`` and ``document/`` (plain sentence-transformers folders), ``kale_pair.json`` and, with
        ``router=True``, ``router/`` (:meth:`to_router`). Each model folder has its model card as ``README.md``,
        which names the other folders as ``<folder name>/query`` etc. until :meth:`push_to_hub` sets repo ids.

        With ``onnx=True`` (or a quantization config, see :data:`kale_st.onnx.QUANTIZATIONS`; needs ``pip install
        "kale_st[onnx]"``), ``query/`` also gets ``onnx/model.onnx`` and its int8 version for this CPU, recorded in
        ``metadata["onnx"]`` and shown in the query card; load them with :func:`kale_st.onnx.load_onnx`.

        The folder is written next to ``path`` and renamed into place, so a failed save leaves nothing behind.
        """
        if onnx:
            from kale_st.onnx import require_onnx

            require_onnx()
        target = Path(path)
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise ValueError(f"{str(target)!r} exists and is not empty: pass overwrite=True or a new folder.")
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        kinds = ["query", "document", *(["router"] if router else [])]
        links = {kind: f"{target.resolve().name}/{kind}" for kind in kinds}
        try:
            for kind in kinds:
                self._write(kind, scratch / kind, links, onnx=onnx)
            (scratch / METADATA_FILE).write_text(json.dumps(self._saved_metadata(), indent=2, sort_keys=True) + "\n")
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
            raise ValueError(
                f"{str(folder)!r} has no {METADATA_FILE}: it is not a folder written by AsymmetricPair.save."
            )
        metadata = json.loads((folder / METADATA_FILE).read_text())
        if metadata.get("plot") and not Path(metadata["plot"]).is_absolute():  # the copy save wrote
            metadata["plot"] = str(folder / metadata["plot"])
        return cls(
            query_model=SentenceTransformer(str(folder / "query"), **model_kwargs),
            document_model=SentenceTransformer(str(folder / "document"), **model_kwargs),
            metadata=metadata,
        )

    @classmethod
    def from_router(cls, model: SentenceTransformer, metadata: dict[str, Any] | None = None) -> AsymmetricPair:
        """Split a query/document Router model (for example from :func:`kale_st.asymmetric`) into a pair of plain
        models: copies of its ``query`` and ``document`` routes, each followed by the modules after the Router."""
        if not len(model) or not isinstance(model[0], Router):
            raise ValueError("from_router expects a Router model (see kale_st.asymmetric); this model has no Router.")
        return cls(task_model(model, "query"), task_model(model, "document"), dict(metadata or {}))

    def push_to_hub(
        self,
        query_repo_id: str,
        *,
        document_repo_id: str | None = None,
        router_repo_id: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        onnx: bool | str = False,
    ) -> dict[str, CommitInfo]:
        """Upload the pair as Hub model repos with linked cards: see :func:`kale_st.hub.push_to_hub`."""
        from kale_st.hub import push_to_hub

        return push_to_hub(
            self,
            query_repo_id,
            document_repo_id=document_repo_id,
            router_repo_id=router_repo_id,
            private=private,
            token=token,
            create_pr=create_pr,
            revision=revision,
            onnx=onnx,
        )

    def _saved_metadata(self) -> dict[str, Any]:
        """``metadata`` as ``kale_pair.json`` holds it: the plot by its copy in the pair folder, never a local path."""
        saved = dict(self.metadata)
        plot = saved.pop("plot", None)
        if plot and Path(plot).is_file():
            saved["plot"] = f"query/{PLOT_NAME}{Path(plot).suffix}"
        return saved

    def _models(self) -> dict[str, SentenceTransformer]:
        return {"query": self.query_model, "document": self.document_model}

    def _write(self, kind: str, folder: Path, links: dict[str, str | None], onnx: bool | str = False) -> None:
        """Write the ``kind`` repo (``query``, ``document`` or ``router``) to ``folder``, with its model card; with
        ``onnx``, the query repo gets its ONNX files and ``metadata["onnx"]`` is set (else dropped)."""
        model = self._models()[kind] if kind != "router" else self.to_router()
        model.save(str(folder), create_model_card=False)
        onnx_files = None
        if kind == "query":
            if onnx:
                from kale_st.onnx import write_onnx

                files = write_onnx(model, folder, quantize="auto" if onnx is True else onnx)
                latency = self.metadata.get("onnx", {}).get("latency")  # kept while it timed the same files
                same = latency and self.metadata["onnx"].get("int8") == files.get("int8")
                self.metadata["onnx"] = onnx_files = {**files, **({"latency": latency} if same else {})}
            else:
                self.metadata.pop("onnx", None)
        plot = self.metadata.get("plot")
        shown = None
        if plot and kind != "document":
            if Path(plot).is_file():
                shown = PLOT_NAME + Path(plot).suffix
                shutil.copyfile(plot, folder / shown)
            else:
                logger.warning("metadata['plot'] = %r is not a file: the %s card shows no plot.", plot, kind)
        card = pair_model_card(self, model, kind, links, plot=shown, onnx=onnx_files)
        (folder / "README.md").write_text(card, encoding="utf-8")


def task_model(model: SentenceTransformer, task: str) -> SentenceTransformer:
    """A standalone model for ``task`` (``query`` or ``document``): ``model`` itself, or for a Router model a new plain
    SentenceTransformer holding copies of that route and the modules after it."""
    if not len(model) or not isinstance(model[0], Router):
        return model
    return with_modules(model, copy.deepcopy(task_modules(model, task)))


def with_modules(model: SentenceTransformer, modules: list[nn.Module]) -> SentenceTransformer:
    """A new SentenceTransformer running ``modules``, with ``model``'s device, prompts, similarity and truncation."""
    return SentenceTransformer(
        modules=modules,
        device=str(model.device),
        prompts=model.prompts,
        default_prompt_name=model.default_prompt_name,
        similarity_fn_name=model.similarity_fn_name,
        truncate_dim=model.truncate_dim,
    )


def task_modules(model: SentenceTransformer, task: str) -> list[nn.Module]:
    """The modules ``model`` runs for ``task``: all of them, or a Router's route followed by the modules after it."""
    modules = list(model)
    if not modules or not isinstance(modules[0], Router):
        return modules
    router = modules[0]
    if task not in router.sub_modules:
        raise ValueError(f"This Router has no {task!r} route (routes: {list(router.sub_modules)}).")
    return [*router.sub_modules[task], *modules[1:]]


def _task_prompt(model: SentenceTransformer, task: str) -> str:
    """The prompt ``model.encode_query`` (task ``query``) or ``model.encode_document`` would use."""
    for name in _TASK_PROMPTS[task]:
        if name in model.prompts:
            return model.prompts[name] or ""
    return model.prompts.get(model.default_prompt_name, "") if model.default_prompt_name else ""

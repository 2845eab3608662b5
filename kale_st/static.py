"""Zero transformer layers: a static query encoder (one vector per token, mean-pooled) made from the teacher.

The limit of layer pruning: the student keeps no transformer layer at all, only a table of token vectors that
``align(model, queries, layers=0)`` trains with KALE to reproduce the teacher's query embeddings. It is a plain
sentence-transformers model (``StaticEmbedding``, then ``Normalize`` when the teacher normalizes) and searches the
teacher's unchanged index.

Example:
    >>> student = static_student(teacher)                     # the teacher's input embeddings  # doctest: +SKIP
    >>> student = static_student(teacher, init="model2vec")   # needs pip install "kale_st[static]"  # doctest: +SKIP
    >>> kale_st.pruning_info(student)["kept_layers"]  # doctest: +SKIP
    []
    >>> pair = kale_st.align(teacher, queries, layers=0)      # the same, aligned  # doctest: +SKIP
    >>> export_model2vec(pair.query_model, "student-static")  # for model2vec / fastembed  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer
from torch import nn

from kale_st.model_card import KALEModelCardData
from kale_st.pair import task_model, with_modules
from kale_st.pruning import LINEAGE_KEY, num_layers, pruning_info, source_name

#: How a static student's token table starts: ``embeddings`` copies the teacher's input (word-piece) embeddings;
#: ``model2vec`` distills one output vector per token through the teacher (model2vec, no PCA; slower, optional).
INITS = ("embeddings", "model2vec")
DEFAULT_INIT = "embeddings"
INSTALL_HINT = 'pip install "kale_st[static]"'


def static_student(
    teacher: SentenceTransformer, *, init: str = DEFAULT_INIT, base_model: str | None = None
) -> SentenceTransformer:
    """A static query encoder initialised from ``teacher``: ``StaticEmbedding`` (+ ``Normalize`` if the teacher has it).

    The student tokenizes as the teacher does (without special tokens) and averages one trainable vector per token.
    The unknown token's vector is zero and left out of the mean, as runtimes that drop unknown tokens do (model2vec,
    fastembed). Prompts, similarity and ``truncate_dim`` are the teacher's. The lineage (:func:`kale_st.pruning_info`: ``source_model``, ``num_layers`` of the source,
    ``kept_layers=[]``, ``strategy="static"``, ``static_init``) lives on the model in memory and in a pair's
    ``kale_pair.json``; a saved student loads as a plain sentence-transformers model.

    Args:
        teacher: The query encoder to imitate (a Router model: its ``query`` route). Never modified.
        init: ``"embeddings"`` (the teacher's input embeddings; instant) or ``"model2vec"`` (model2vec distillation
            through the teacher, no PCA; needs ``pip install "kale_st[static]"``). See :data:`INITS`.
        base_model: Hub id of the teacher when it is a local copy (``None``: inferred, see
            :func:`kale_st.pruning.source_name`).

    Example:
        >>> student = static_student(SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2"))  # doctest: +SKIP
        >>> student.encode_query(["does aspirin lower cancer risk?"]).shape  # doctest: +SKIP
        (1, 384)
    """
    if init not in INITS:
        raise ValueError(f"Unknown init {init!r}: use one of {list(INITS)}.")
    teacher = task_model(teacher, "query")
    modules = list(teacher)
    if not modules or not isinstance(modules[0], Transformer):
        raise ValueError(
            "static_student needs a teacher whose first module is a Hugging Face Transformer "
            f"(got {type(modules[0]).__name__ if modules else 'an empty model'})."
        )
    transformer: Transformer = modules[0]
    dimension = teacher.get_embedding_dimension()
    if init == "model2vec":
        vectors, tokenizer = _distill(transformer, teacher.device)
    else:
        vectors = transformer.auto_model.get_input_embeddings().weight.detach().float().cpu().clone()
        tokenizer = Tokenizer.from_str(transformer.tokenizer.backend_tokenizer.to_str())  # a copy: not the teacher's
    if vectors.shape[1] != dimension:
        raise ValueError(
            f"init={init!r} gives {vectors.shape[1]}-dimensional token vectors but the teacher outputs {dimension}: a "
            "static student needs a teacher without a projection (Dense) after pooling."
        )
    tokenizer.no_truncation()
    unknown = unknown_token_id(tokenizer)
    if unknown is not None:
        vectors[unknown] = 0
    embedding = StaticEmbedding(tokenizer, embedding_weights=vectors)
    # The unknown token is left out of the mean and gets no gradient (its row stays zero, so a loaded copy, which
    # counts it in the mean, gives the same normalized embeddings).
    embedding.embedding = nn.EmbeddingBag.from_pretrained(vectors, freeze=False, mode="mean", padding_idx=unknown)
    normalize = any(isinstance(module, Normalize) for module in modules)
    student = with_modules(teacher, [embedding, *([Normalize()] if normalize else [])]).to(teacher.device)
    previous = pruning_info(teacher)  # a pruned teacher: name its own source
    lineage = {
        "source_model": previous["source_model"] if previous else base_model or source_name(teacher),
        "num_layers": previous["num_layers"] if previous else num_layers(teacher),
        "kept_layers": [],
        "strategy": "static",
        "static_init": init,
    }
    setattr(embedding, LINEAGE_KEY, lineage)
    student.model_card_data = KALEModelCardData(kale=dict(lineage))
    student.model_card_data.register_model(student)
    return student


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """Id of the tokenizer's unknown token (``[UNK]``, ``<unk>``), or ``None`` if it has none."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("type") == "Unigram":
        return model.get("unk_id")
    token = model.get("unk_token")
    return tokenizer.token_to_id(token) if token else None


def export_model2vec(model: SentenceTransformer, folder: str | os.PathLike) -> Path:
    """Write a static student in model2vec's format, which model2vec's ``StaticModel`` and fastembed load.

    Both drop unknown tokens from the mean and normalize, as the student does (its unknown-token vector is zero), so
    the embeddings equal the student's ``encode_query`` for texts up to 512 tokens (their truncation; the student has
    none). A student with a query prompt cannot be exported: those runtimes do not add prompts. Needs
    ``pip install "kale_st[static]"``. The folder is written next to ``folder`` and renamed into place.

    Example:
        >>> export_model2vec(pair.query_model, "student-static")  # doctest: +SKIP
        >>> from model2vec import StaticModel  # doctest: +SKIP
        >>> StaticModel.from_pretrained("student-static").encode(["does aspirin lower cancer risk?"])  # doctest: +SKIP
    """
    StaticModel = _require_model2vec().StaticModel
    modules = list(model)
    if not modules or not isinstance(modules[0], StaticEmbedding):
        raise ValueError("export_model2vec needs a static model (first module StaticEmbedding): align with layers=0.")
    if not any(isinstance(module, Normalize) for module in modules):
        raise ValueError("export_model2vec needs a normalized static model: model2vec and fastembed normalize.")
    if model.prompts.get("query"):
        raise ValueError(f"The model has a query prompt ({model.prompts['query']!r}) that model2vec would not add.")
    info = pruning_info(model) or {}
    static = StaticModel(
        vectors=modules[0].embedding.weight.detach().float().cpu().numpy(),
        tokenizer=Tokenizer.from_str(modules[0].tokenizer.to_str()),
        normalize=True,
        base_model_name=info.get("source_model"),
    )
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        static.save_pretrained(scratch)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_fastembed(folder: str | os.PathLike) -> Any:
    """fastembed's ``TextEmbedding`` serving a folder written by :func:`export_model2vec` (``pip install fastembed``).

    fastembed 0.9 serves static models only from its own list (``add_custom_model`` registers ONNX models), so the
    folder is added to that list under the name ``kale_st/<folder name>``; it is read from disk, never downloaded.

    Example:
        >>> model = load_fastembed(export_model2vec(pair.query_model, "student-static"))  # doctest: +SKIP
        >>> next(iter(model.embed(["does aspirin lower cancer risk?"]))).shape  # doctest: +SKIP
        (384,)
    """
    try:
        from fastembed import TextEmbedding
        from fastembed.common.model_description import DenseModelDescription, ModelSource
        from fastembed.text.static_embedding import supported_static_models
    except ImportError as error:
        raise ImportError(f"This needs fastembed ({error}): pip install fastembed.") from error
    path = Path(folder)
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise ValueError(f"{str(path)!r} has no model.safetensors and tokenizer.json: write it with export_model2vec.")
    name = f"kale_st/{path.resolve().name}"
    dim = json.loads((path / "config.json").read_text()).get("hidden_dim", 0)
    if not any(model.model == name for model in supported_static_models):
        description = DenseModelDescription(
            model=name, dim=dim, description="kale_st static student", license="", size_in_GB=0.0,
            sources=ModelSource(hf=name), model_file="model.safetensors",
        )
        supported_static_models.append(description)
    return TextEmbedding(name, specific_model_path=str(path), local_files_only=True)


def _distill(transformer: Transformer, device: torch.device) -> tuple[torch.Tensor, Tokenizer]:
    """model2vec's output vector of every token of the teacher's vocabulary (no PCA, float32), and its tokenizer."""
    distill_from_model = _require_model2vec(distill=True).distill.distill_from_model
    static: Any = distill_from_model(
        transformer.auto_model, transformer.tokenizer, device=str(device), pca_dims=None, quantize_to="float32"
    )
    vectors = torch.as_tensor(static.embedding, dtype=torch.float32)
    if getattr(static, "token_mapping", None) is not None:
        vectors = vectors[torch.as_tensor(static.token_mapping, dtype=torch.long)]
    if getattr(static, "weights", None) is not None:
        vectors = vectors * torch.as_tensor(static.weights, dtype=torch.float32)[:, None]
    return vectors.contiguous(), static.tokenizer


def _require_model2vec(distill: bool = False) -> Any:
    try:
        import model2vec

        if distill:
            import model2vec.distill  # noqa: F401  (needs transformers and skeletoken)
    except ImportError as error:
        raise ImportError(f"This needs model2vec ({error}): {INSTALL_HINT}.") from error
    return model2vec

"""Model cards of KALE models, rendered by sentence-transformers' card machinery with the templates in ``model_cards/``.

One template per repo kind: ``query.md`` (the pruned, aligned query encoder), ``document.md`` (the unchanged document
encoder) and ``router.md`` (both behind one ``Router``).

Example:
    >>> text = pair_model_card(pair, pair.query_model, "query", {"query": "o/q", "document": "o/d"})  # doctest: +SKIP
    >>> huggingface_hub.ModelCard(text).data.base_model_relation  # doctest: +SKIP
    'finetune'
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index
from huggingface_hub.utils import HFValidationError, validate_repo_id, yaml_dump
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.model_card import YAML_FIELDS
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from kale_st.loss import KALE_CITATION

if TYPE_CHECKING:
    from kale_st.pair import AsymmetricPair

# Installed from a wheel, the templates sit in kale_st/model_cards/; in a source checkout, in ../model_cards/.
_PACKAGE = Path(__file__).parent
TEMPLATES = _PACKAGE / "model_cards" if (_PACKAGE / "model_cards").is_dir() else _PACKAGE.parent / "model_cards"

#: Repo kinds of a pair, each with its template ``model_cards/{kind}.md`` and its Hub tags.
TAGS: dict[str, list[str]] = {
    "query": ["kale", "asymmetric", "query-encoder", "pruned"],
    "document": ["kale", "asymmetric", "document-encoder"],
    "router": ["kale", "asymmetric", "query-encoder", "document-encoder", "router", "pruned"],
}
#: The Hub's ``base_model_relation`` (one of adapter, merge, quantized, finetune) to the source model. A pruned copy
#: trained to reproduce the source's embeddings is a fine-tune in the Hub's vocabulary (it is neither quantized, nor
#: an adapter, nor a weight merge). The document repo is the source unchanged: no relation fits, so it claims none.
RELATIONS: dict[str, str] = {"query": "finetune", "router": "finetune"}
#: Front-matter keys written on top of sentence-transformers' own (which drops every key it does not know).
EXTRA_YAML_FIELDS = ["base_model_relation"]
#: Card data carried over from the model's own card: training and evaluation sections still come from
#: sentence-transformers.
_CARRIED = (
    "language",
    "train_datasets",
    "eval_datasets",
    "datasets",
    "all_hyperparameters",
    "non_default_hyperparameters",
    "eval_results_dict",
    "training_logs",
    "widget",
    "citations",
    "best_model_step",
)
_METRIC_NAMES = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "Recall", "precision": "Precision"}
_EXAMPLE_QUERY = "Which planet is known as the Red Planet?"
_EXAMPLE_DOCUMENTS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]


@dataclass
class KALEModelCardData(SentenceTransformerModelCardData):
    """sentence-transformers' card data plus the KALE sections of a query, document or router repo.

    Args:
        kale: What the card reports: the lineage of :func:`kale_st.prune_layers` or an
            :class:`~kale_st.AsymmetricPair`'s ``metadata`` (keys documented there).
        kind: ``"query"``, ``"document"`` or ``"router"``: the template ``model_cards/{kind}.md`` and the tags.
        links: Repo ids of the pair's parts: ``query``, ``document``, ``document_revision``, ``router``, and
            ``endpoint`` (the Hub URL; ``None`` for local folder names, which are then not hyperlinked).
        base_model_relation: The Hub's relation to ``base_model`` (see :data:`RELATIONS`).

    Example:
        >>> model.model_card_data = KALEModelCardData(kale=kale_st.pruning_info(model))  # doctest: +SKIP
    """

    kale: dict[str, Any] = field(default_factory=dict)
    kind: str = "query"
    links: dict[str, str | None] = field(default_factory=dict)
    base_model_relation: str | None = None
    example_scores: str | None = None
    template_path: Path = field(default=TEMPLATES / "query.md", init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in TAGS:
            raise ValueError(f"Unknown card kind {self.kind!r}: use one of {sorted(TAGS)}.")
        super().__post_init__()
        self.template_path = TEMPLATES / f"{self.kind}.md"
        self.add_tags(TAGS[self.kind])

    def to_dict(self) -> dict[str, Any]:
        self._add_citations()
        self.model_name = self.model_name or _model_name(self.kind, self.kale, self.links)
        data = super().to_dict()  # also cached for to_yaml, so the additions below reach the front matter
        if data.get("base_model") and self.kind in RELATIONS:
            data["base_model_relation"] = self.base_model_relation or RELATIONS[self.kind]
        source = self.kale.get("source_model")
        data["source_name"] = _display_name(source)
        data["source_on_hub"] = is_hub_id(source)
        data["query_repo"] = self.links.get("query") or self.model_id or "path/to/this/model"
        data["document_repo"] = self.links.get("document") or (source if is_hub_id(source) else "path/to/source/model")
        data["example"] = {"query": repr(_EXAMPLE_QUERY), "documents": [repr(d) for d in _EXAMPLE_DOCUMENTS]}
        onnx = self.kale.get("onnx") or {}
        if onnx.get("latency"):
            data["onnx_rows"] = _onnx_rows(onnx)
        evaluation = self.kale.get("evaluation")
        if evaluation:
            data["evaluation_rows"] = _evaluation_rows(evaluation)
            if self.kind != "document":  # the student's scores; the document repo alone scores as the teacher
                ours = eval_results_to_model_index(self.model_name, _eval_results(evaluation))
                theirs = data.get("model-index") or [{"name": self.model_name, "results": []}]
                data["model-index"] = [{**theirs[0], "results": theirs[0]["results"] + ours[0]["results"]}]
        return data

    def to_yaml(self, line_break: str | None = None) -> str:
        data = self._cached_dict if self._cached_dict is not None else self.to_dict()
        self._cached_dict = None
        keys = [*YAML_FIELDS, *EXTRA_YAML_FIELDS]
        front = {key: data[key] for key in keys if data.get(key) not in (None, [], {})}
        return yaml_dump(front, sort_keys=False, line_break=line_break).strip()

    def _add_citations(self) -> None:
        """Cite sentence-transformers and KALE, next to the citations the Trainer collected."""
        known = dict(self.citations)
        self.set_losses([])  # sentence-transformers' own citation
        for name, text in {**known, "KALE": KALE_CITATION}.items():
            if text.strip() not in {cited.strip() for cited in self.citations.values()}:
                self.citations[name] = text


def pair_model_card(
    pair: AsymmetricPair,
    model: SentenceTransformer,
    kind: str,
    links: dict[str, str | None],
    plot: str | None = None,
    onnx: dict[str, Any] | None = None,
) -> str:
    """The README.md of one repo of ``pair``: ``model`` is its query model, document model or router model.

    ``links`` are the repo ids (see :class:`KALEModelCardData`); ``plot`` the plot's file name in the repo, if any;
    ``onnx`` the repo's ONNX files (``AsymmetricPair.metadata["onnx"]``), if it has them: the query card then shows
    how to run them and their latency, and the repo is tagged ``onnx``.
    """
    own = model.model_card_data
    kale = {**getattr(pair.query_model.model_card_data, "kale", {}), **pair.metadata, "plot": plot, "onnx": onnx}
    scores = pair.similarity(
        pair.encode_query([_EXAMPLE_QUERY], convert_to_tensor=True, show_progress_bar=False),
        pair.encode_document(_EXAMPLE_DOCUMENTS, convert_to_tensor=True, show_progress_bar=False),
    )
    card = KALEModelCardData(
        kind=kind,
        kale=kale,
        links=dict(links),
        license=own.license or source_license(pair.document_model),
        example_scores=format_scores(scores),
        local_files_only=True,  # no Hub look-ups while rendering: the base model is set here
        generate_widget_examples=False,  # the usage snippet is the pair's, scored above
    )
    for name in _CARRIED:
        if hasattr(own, name):
            setattr(card, name, copy.copy(getattr(own, name)))
    # An evaluator run again under the same name (align scores the student before and after): the card shows the
    # model as it is, so only the latest scores.
    latest = {(type(e), getattr(e, "name", None)): (e, m) for e, m in (card.eval_results_dict or {}).items()}
    card.eval_results_dict = dict(latest.values())
    card.add_tags(list(own.tags or []) + (["onnx"] if onnx else []))
    if kind in RELATIONS:
        card.base_model = _base_model(card.kale.get("source_model"), links)
    card.register_model(model)
    return ModelCard.from_template(card_data=card, template_path=str(card.template_path), hf_emoji="🤗").content


def format_scores(scores: torch.Tensor) -> str:
    """A similarity matrix as Python comments, printed as ``print(similarities)`` shows it."""
    with torch._tensor_str.printoptions(precision=4, sci_mode=False):
        return "\n".join(f"# {line}" for line in str(scores.cpu()).splitlines())


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub model id ``namespace/name`` rather than a local folder (a folder wins)."""
    if not name or name.count("/") != 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def source_license(model: SentenceTransformer) -> str | None:
    """The license of ``model``: from its card data, else from the front matter of the card it was loaded with."""
    if model.model_card_data.license:
        return model.model_card_data.license
    text = getattr(model, "_model_card_text", None)
    return ModelCard(text).data.license if text else None


def _base_model(source: str | None, links: dict[str, str | None]) -> str | None:
    """The Hub id the query encoder derives from: the source model, else its unchanged copy on the Hub."""
    if is_hub_id(source):
        return source
    return links.get("document") if links.get("endpoint") else None


def _display_name(source: str | None) -> str | None:
    """A Hub id as is; a local folder by its name only (cards never show local paths)."""
    return source if is_hub_id(source) else Path(source).name if source else None


def _model_name(kind: str, kale: dict[str, Any], links: dict[str, str | None]) -> str:
    source = kale.get("source_model")
    hub_copy = links.get("document") if links.get("endpoint") else None
    name = source if is_hub_id(source) else hub_copy or _display_name(source) or "a model"
    kept = f"{len(kale['kept_layers'])} of {kale['num_layers']} layers" if "kept_layers" in kale else "pruned"
    return {
        "query": f"KALE query encoder ({kept}) for {name}",
        "document": f"{name}: document encoder of a KALE pair (unchanged)",
        "router": f"KALE query/document router for {name} (queries: {kept})",
    }[kind]


def _metric_name(key: str) -> str:
    name, _, k = key.partition("@")
    return _METRIC_NAMES.get(name.lower(), name) + (f"@{k}" if k else "")


def _evaluation_rows(evaluation: dict[str, Any]) -> list[dict[str, str]]:
    teacher, student = evaluation.get("teacher", {}), evaluation.get("student", {})
    rows = []
    for key in [*teacher, *(k for k in student if k not in teacher)]:
        t, s = teacher.get(key), student.get(key)
        rows.append(
            {
                "metric": _metric_name(key),
                "teacher": f"{t:.4f}" if t is not None else "-",
                "student": f"{s:.4f}" if s is not None else "-",
                "ratio": f"{100 * s / t:.1f} %" if t and s is not None else "-",
            }
        )
    return rows


def _onnx_rows(onnx: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the query card's runtime table from ``metadata["onnx"]["latency"]`` (one run, batch-1 p50)."""
    latency = onnx["latency"]
    runtimes = {
        "teacher_ms": "teacher (source model), PyTorch",
        "student_ms": "this model, PyTorch",
        "fp32_ms": f"this model, ONNX Runtime float32 (`{onnx.get('fp32', 'onnx/model.onnx')}`)",
        "int8_ms": f"this model, ONNX Runtime int8 (`{onnx.get('int8', '-')}`)",
    }
    teacher = latency.get("teacher_ms")
    return [
        {
            "runtime": label,
            "ms": f"{latency[key]:.1f} ms",
            "speedup": f"{teacher / latency[key]:.2f}x" if teacher and latency[key] else "-",
        }
        for key, label in runtimes.items()
        if latency.get(key) is not None
    ]


def _eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    dataset = evaluation.get("dataset", "unknown")
    return [
        EvalResult(
            task_type="retrieval",
            task_name="Retrieval",
            dataset_type=re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-") or "unknown",
            dataset_name=dataset,
            metric_type=key,
            metric_name=_metric_name(key),
            metric_value=float(value),
        )
        for key, value in evaluation.get("student", {}).items()
    ]

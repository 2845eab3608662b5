"""Push an :class:`~kale_st.AsymmetricPair` to the Hugging Face Hub as model repos with linked model cards.

Example:
    >>> commits = pair.push_to_hub("org/kale-query-2l", router_repo_id="org/kale-router-2l")  # doctest: +SKIP
    >>> commits["query"].commit_url  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.utils import validate_repo_id

from kale_st.model_card import is_hub_id

if TYPE_CHECKING:
    from kale_st.pair import AsymmetricPair

logger = logging.getLogger(__name__)


def push_to_hub(
    pair: AsymmetricPair,
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
    """Create the repos and upload the pair: the query encoder, the document encoder, optionally the router model.

    Each repo gets the folder :meth:`AsymmetricPair.save` would write (safetensors weights, its model card), with the
    cards re-rendered to link the real repo ids. The document repo is uploaded first so that the other cards pin its
    commit.

    Document encoder rule: with ``document_repo_id`` it is uploaded there. Without it, the pair's
    ``metadata["source_model"]`` must be a Hub model id (``namespace/name`` that is not a local folder): the document
    encoder is then that repo, unchanged, referenced by id and revision (``metadata["source_revision"]``, else the
    revision sentence-transformers recorded when it loaded the document model from the Hub, else none) and not
    uploaded again. A source that is a local folder raises ``ValueError``: pass ``document_repo_id``.

    Args:
        pair: The pair to upload.
        query_repo_id: Repo of the query encoder, ``namespace/name``.
        document_repo_id: Repo to upload the document encoder to; see the rule above.
        router_repo_id: If set, :meth:`AsymmetricPair.to_router` is uploaded there too.
        private: Visibility of repos this call creates (``None``: the namespace's default).
        token: Hub token; ``None`` uses the logged-in one (``huggingface_hub.get_token()``). Never written anywhere.
        create_pr: Open a pull request in each repo instead of committing to ``main``.
        revision: Branch to commit to (created if missing); not with ``create_pr``.
        onnx: Also upload the query encoder's ONNX files (``onnx/``, as :meth:`AsymmetricPair.save` with ``onnx``
            writes them; needs ``pip install "kale_st[onnx]"``).

    Returns:
        The ``CommitInfo`` of each upload (``commit_url``, ``oid``, ``pr_url``, ``repo_url``), keyed ``document``,
        ``query``, ``router``; ``document`` only when it was uploaded.

    Raises:
        ValueError: No token, a local source without ``document_repo_id``, a malformed or repeated repo id, or
            ``create_pr`` with ``revision``; raised before any request to the Hub.
    """
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token: pass token=..., set HF_TOKEN or run `hf auth login`. Nothing was uploaded."
        )
    if create_pr and revision not in (None, "main"):
        raise ValueError("create_pr=True opens pull requests against main: leave revision unset.")
    if onnx:
        from kale_st.onnx import require_onnx

        require_onnx()
    document_id, document_revision = document_repo(pair, document_repo_id)
    named = {"document": document_repo_id, "query": query_repo_id, "router": router_repo_id}
    repos = {kind: repo_id for kind, repo_id in named.items() if repo_id}  # the document first
    for repo_id in repos.values():
        validate_repo_id(repo_id)
        if repo_id.count("/") != 1:
            raise ValueError(f"Repo id {repo_id!r} must read namespace/name.")
    if len(set(repos.values())) != len(repos) or document_id in (query_repo_id, router_repo_id):
        raise ValueError(f"Each part of the pair needs its own repo, got {repos} (document: {document_id!r}).")

    api = HfApi(token=token)
    for repo_id in repos.values():
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
    links = {
        "query": query_repo_id,
        "document": document_id,
        "document_revision": document_revision,
        "router": router_repo_id,
        "endpoint": api.endpoint,
    }
    commits: dict[str, CommitInfo] = {}
    with tempfile.TemporaryDirectory(prefix="kale-push-") as scratch:
        for kind, repo_id in repos.items():
            folder = Path(scratch) / kind
            pair._write(kind, folder, links, onnx=onnx)
            commits[kind] = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=f"Upload the KALE {kind} model",
                revision=revision,
                create_pr=create_pr,
            )
            logger.info("Uploaded the %s repo: %s", kind, commits[kind].commit_url)
            if kind == "document":
                links["document_revision"] = commits[kind].oid
    return commits


def document_repo(pair: AsymmetricPair, document_repo_id: str | None = None) -> tuple[str, str | None]:
    """Repo id and revision the cards give for the document encoder (see :func:`push_to_hub` for the rule).

    Example:
        >>> document_repo(pair)  # source_model "sentence-transformers/all-MiniLM-L6-v2"  # doctest: +SKIP
        ('sentence-transformers/all-MiniLM-L6-v2', 'c9745ed1d9f207416be6d2e6f8de32d1f16199bf')
    """
    if document_repo_id:
        return document_repo_id, None
    source = pair.metadata.get("source_model")
    if not is_hub_id(source):
        raise ValueError(
            f"The document encoder comes from {source!r}, which is not a Hub model id (namespace/name): pass "
            "document_repo_id='namespace/name' to upload it with the query encoder. Nothing was uploaded."
        )
    card = pair.document_model.model_card_data
    recorded = card.base_model_revision if card.base_model == source else None
    return source, pair.metadata.get("source_revision") or recorded

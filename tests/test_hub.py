"""AsymmetricPair.push_to_hub with the real huggingface_hub client against a Hub stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import SENTENCES, make_pair, python_block, tiny_model
from huggingface_hub import ModelCard, get_token
from hub_standin import HubStandIn

from kale_st.hub import document_repo

TOKEN = "hf_kaleStandInTokenThatMustNeverBeWritten"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandIn]:
    """The stand-in as the Hub of this process, with no token stored anywhere."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with HubStandIn(token=TOKEN) as stand_in:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", stand_in.url)
        yield stand_in


def load_by_repo_id(hub: HubStandIn, tmp_path: Path, code: str) -> dict:
    """Run ``code`` in a fresh Python whose Hub is the stand-in, with an empty cache; it prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_push_then_load_by_repo_id(hub: HubStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pair = make_pair(tiny_model(tmp_path / "m"))
    commits = pair.push_to_hub(
        "org/kale-query-2l", document_repo_id="org/kale-doc", router_repo_id="org/kale-router", token=TOKEN
    )
    assert list(commits) == ["document", "query", "router"]
    assert sorted(hub.repos) == ["org/kale-doc", "org/kale-query-2l", "org/kale-router"]
    assert hub.authorized >= 9  # 3 creates + 3 x (validate, preupload, commit), all with the token
    files = hub.files("org/kale-query-2l")
    assert {"README.md", "model.safetensors", "modules.json"} <= set(files)
    assert not any(name.endswith(".bin") for name in files)

    card = ModelCard(files["README.md"].decode())
    revision = commits["document"].oid
    assert card.data.base_model == "org/kale-doc" and card.data.base_model_relation == "finetune"
    assert f'SentenceTransformer("org/kale-doc", revision="{revision}")' in card.content
    assert f"[`org/kale-doc`]({hub.url}/org/kale-doc/tree/{revision}) at revision `{revision}`" in card.content
    assert "[`org/kale-router`]" in card.content
    assert "[`org/kale-query-2l`]" in hub.files("org/kale-doc")["README.md"].decode()

    # The query card's own snippet, run by repo id, then the embeddings of each repo.
    code = python_block(card.content) + (
        "import json\n"
        "router = SentenceTransformer('org/kale-router')\n"
        f"texts = {SENTENCES!r}\n"
        "print(json.dumps({'similarities': similarities.tolist(), 'queries': queries, 'documents': documents,\n"
        "    'query': query_model.encode_query(texts).tolist(),\n"
        "    'document': document_model.encode_document(texts).tolist(),\n"
        "    'router query': router.encode_query(texts).tolist(),\n"
        "    'router document': router.encode_document(texts).tolist()}))\n"
    )
    loaded = load_by_repo_id(hub, tmp_path, code)
    expected = {"query": pair.encode_query(SENTENCES), "document": pair.encode_document(SENTENCES)}
    for key in ("query", "document", "router query", "router document"):
        assert torch.equal(torch.tensor(loaded[key]), torch.from_numpy(expected[key.split()[-1]])), key
    scores = pair.similarity(
        pair.encode_query(loaded["queries"], convert_to_tensor=True),
        pair.encode_document(loaded["documents"], convert_to_tensor=True),
    )
    assert torch.allclose(torch.tensor(loaded["similarities"]), scores, atol=1e-6)
    assert ("GET", f"/org/kale-doc/resolve/{revision}/model.safetensors") in hub.requests  # the pinned revision

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20  # the saved models, the HF cache of the subprocess, ...
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    assert not [f for repo in hub.repos for f, content in hub.files(repo).items() if TOKEN.encode() in content]
    assert TOKEN not in caplog.text


def test_missing_token_is_refused_before_any_request(hub: HubStandIn, tmp_path: Path) -> None:
    assert get_token() is None
    pair = make_pair(tiny_model(tmp_path / "m"))
    with pytest.raises(ValueError, match="No Hugging Face token"):
        pair.push_to_hub("org/kale-query-2l", document_repo_id="org/kale-doc")
    assert hub.requests == [] and hub.repos == {}


def test_local_source_needs_a_document_repo(hub: HubStandIn, tmp_path: Path) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"))
    with pytest.raises(ValueError, match="pass document_repo_id"):
        pair.push_to_hub("org/kale-query-2l", token=TOKEN)
    with pytest.raises(ValueError, match="own repo"):
        pair.push_to_hub("org/kale-query-2l", document_repo_id="org/kale-query-2l", token=TOKEN)
    assert hub.requests == []


def test_hub_source_is_referenced_not_uploaded(hub: HubStandIn, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    model.model_card_data.base_model, model.model_card_data.base_model_revision = "org/base-model", "b" * 40
    pair = make_pair(model, source_model="org/base-model")
    assert document_repo(pair) == ("org/base-model", "b" * 40)  # the revision sentence-transformers recorded
    pair.metadata["source_revision"] = "a" * 40
    assert document_repo(pair) == ("org/base-model", "a" * 40)

    commits = pair.push_to_hub("org/kale-query-2l", token=TOKEN)
    assert list(commits) == ["query"] and sorted(hub.repos) == ["org/kale-query-2l"]
    card = ModelCard(hub.files("org/kale-query-2l")["README.md"].decode())
    assert card.data.base_model == "org/base-model" and card.data.base_model_relation == "finetune"
    assert f'SentenceTransformer("org/base-model", revision="{"a" * 40}")' in card.content


def test_push_to_a_branch_or_as_a_pull_request(hub: HubStandIn, tmp_path: Path) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"), source_model="org/base-model")
    branch = pair.push_to_hub("org/kale-query-2l", token=TOKEN, revision="dev")["query"]
    assert "README.md" in hub.files("org/kale-query-2l", "dev") and hub.files("org/kale-query-2l") == {}
    pull = pair.push_to_hub("org/kale-query-2l", token=TOKEN, create_pr=True)["query"]
    assert pull.pr_url == f"{hub.url}/org/kale-query-2l/discussions/1" and branch.oid != pull.oid
    assert hub.files("org/kale-query-2l") == {}  # main untouched
    with pytest.raises(ValueError, match="leave revision unset"):
        pair.push_to_hub("org/kale-query-2l", token=TOKEN, create_pr=True, revision="dev")

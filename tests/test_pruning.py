"""prune_layers: every supported architecture, Router routes, round trips and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, SENTENCES, assert_same_state, state, tiny_model, tiny_router_model
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.architectures import find_layers
from kale_st.strategies import select_layers


def encode(model: SentenceTransformer, **kwargs) -> torch.Tensor:
    return model.encode(SENTENCES, convert_to_tensor=True, **kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prune_save_load_round_trip(architecture: str, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "src", architecture)
    assert 1 not in model.tokenizer(SENTENCES)["input_ids"][0]  # no [UNK]: the tiny tokenizer knows the words
    before = state(model)
    pruned = kale_st.prune_layers(model, 2)

    assert_same_state(before, model)  # the input is untouched
    assert kale_st.num_layers(model) == 4 and kale_st.num_layers(pruned) == 2
    hf_pruned = pruned[0].auto_model
    original_layers = getattr(*find_layers(model[0].auto_model)[:2])
    kept_layers = getattr(*find_layers(hf_pruned)[:2])
    assert len(original_layers) == 4 and len(kept_layers) == 2 and hf_pruned.config.num_hidden_layers == 2

    # The kept layers are the original layers 0 and 3, weight for weight.
    for new, old in zip(kept_layers, (original_layers[0], original_layers[3])):
        for (n1, p1), (n2, p2) in zip(new.state_dict().items(), old.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2)

    expected = encode(pruned)
    assert not torch.allclose(expected, encode(model))  # pruning changed the function
    pruned.save(str(tmp_path / "pruned"))
    reloaded = SentenceTransformer(str(tmp_path / "pruned"), device="cpu")
    assert kale_st.num_layers(reloaded) == 2
    assert torch.equal(encode(reloaded), expected)
    assert kale_st.pruning_info(reloaded) == {
        "source_model": "src",  # a local-only source by its folder name, never its path
        "num_layers": 4,
        "kept_layers": [0, 3],
        "strategy": "spread",
    }


def test_per_layer_config_lists_and_indices_follow_the_kept_layers(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "src", "modernbert")
    types = model[0].auto_model.config.layer_types
    assert types == ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    pruned = kale_st.prune_layers(model, [0, 1, 3])
    config = pruned[0].auto_model.config
    assert config.layer_types == [types[0], types[1], types[3]]
    layers = pruned[0].auto_model.layers
    assert [layer.layer_idx for layer in layers] == [0, 1, 2]
    assert [layer.attention_type for layer in layers] == config.layer_types
    pruned.save(str(tmp_path / "pruned"))
    assert torch.equal(encode(SentenceTransformer(str(tmp_path / "pruned"), device="cpu")), encode(pruned))


def test_exact_indices_and_repeated_pruning_compose_lineage(bert_model: SentenceTransformer) -> None:
    pruned = kale_st.prune_layers(bert_model, [1, 2, 3])
    assert kale_st.pruning_info(pruned)["kept_layers"] == [1, 2, 3]
    assert kale_st.pruning_info(pruned)["strategy"] == "indices"
    again = kale_st.prune_layers(pruned, 1, strategy="top")
    assert kale_st.pruning_info(again) == {**kale_st.pruning_info(pruned), "kept_layers": [3], "strategy": "top"}


def test_pruned_copy_gets_a_fresh_model_card(minilm_path: str, tmp_path: Path) -> None:
    model = SentenceTransformer(minilm_path, device="cpu")
    assert "all-MiniLM-L6-v2" in model._model_card_text
    pruned = kale_st.prune_layers(model, 2)
    pruned.save(str(tmp_path / "p"))
    card = (tmp_path / "p" / "README.md").read_text()
    assert "s2orc" not in card and "It maps sentences & paragraphs" not in card  # nothing of the source's card
    # ... but its Hub id, which the bundled folder's card names in its usage snippet
    assert kale_st.pruning_info(pruned)["source_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card.split("---")[1]
    assert "# KALE query encoder (2 of 6 layers) for sentence-transformers/all-MiniLM-L6-v2" in card
    assert minilm_path not in card
    assert "**Layers kept:** 2 of 6 (indices 0, 5, strategy `spread`)" in card
    assert "no re-indexing is needed" in card and "2304.01016" in card
    assert "- kale" in card.split("---")[1]  # a tag in the YAML front matter


def test_real_minilm_pruned_to_two_layers_round_trips(minilm_path: str, tmp_path: Path) -> None:
    model = SentenceTransformer(minilm_path, device="cpu")
    pruned = kale_st.prune_layers(model, 2)
    assert kale_st.pruning_info(pruned)["kept_layers"] == [0, 5]
    expected = encode(pruned)
    pruned.save(str(tmp_path / "p"))
    assert sorted(p.name for p in (tmp_path / "p").glob("*.safetensors")) == ["model.safetensors"]
    reloaded = SentenceTransformer(str(tmp_path / "p"), device="cpu")
    assert kale_st.num_layers(reloaded) == 2
    assert torch.equal(encode(reloaded), expected)
    cosine = torch.nn.functional.cosine_similarity(expected, encode(model)).mean()
    assert 0.2 < cosine < 0.99  # a real but lossy approximation of the teacher


def test_router_prunes_only_the_named_route(tmp_path: Path) -> None:
    model = tiny_router_model(tmp_path / "src")
    document_state = state(model[0].sub_modules["document"])
    pruned = kale_st.prune_layers(model, 1, route="query")
    assert kale_st.num_layers(pruned, route="query") == 1
    assert kale_st.num_layers(pruned, route="document") == 4
    assert_same_state(document_state, pruned[0].sub_modules["document"])
    assert torch.equal(encode(pruned, task="document"), encode(model, task="document"))
    queries = encode(pruned, task="query")
    pruned.save(str(tmp_path / "pruned"))
    reloaded = SentenceTransformer(str(tmp_path / "pruned"), device="cpu")
    assert torch.equal(encode(reloaded, task="query"), queries)
    assert kale_st.pruning_info(reloaded, route="query")["kept_layers"] == [0]
    assert kale_st.pruning_info(reloaded, route="document") is None


def test_route_sharing_its_module_with_another_route_is_split(bert_model: SentenceTransformer) -> None:
    from sentence_transformers.base.modules import Router

    shared = list(bert_model.children())
    router = SentenceTransformer(modules=[Router.for_query_document(shared, shared)], device="cpu")
    pruned = kale_st.prune_layers(router, 2, route="query")
    assert kale_st.num_layers(pruned, route="query") == 2
    assert kale_st.num_layers(pruned, route="document") == 4


@pytest.mark.parametrize(
    ("strategy", "keep", "total", "expected"),
    [
        ("spread", 2, 12, [0, 11]),
        ("spread", 3, 12, [0, 5, 11]),
        ("spread", 2, 6, [0, 5]),
        ("spread", 1, 6, [0]),
        ("spread", 5, 6, [0, 1, 2, 3, 5]),
        ("bottom", 2, 6, [0, 1]),
        ("top", 2, 6, [4, 5]),
    ],
)
def test_strategies(strategy: str, keep: int, total: int, expected: list[int]) -> None:
    assert select_layers(strategy, keep, total) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 0}, "keep at least 1 layer"),
        ({"layers": -1}, "keep at least 1 layer"),
        ({"layers": 4}, "already has 4 layers"),
        ({"layers": 7}, "already has 4 layers"),
        ({"layers": [0, 0, 2]}, "duplicate"),
        ({"layers": [0, 4]}, "out of range"),
        ({"layers": [-1, 2]}, "out of range"),
        ({"layers": []}, "empty"),
        ({"layers": [0, 1, 2, 3]}, "already has 4 layers"),
        ({"layers": 2.0}, "must be an int"),
        ({"layers": [0.0, 1]}, "integer indices"),
        ({"layers": 2, "strategy": "middle"}, "Unknown strategy 'middle'"),
        ({"layers": 2, "route": "query"}, "has no Router"),
        ({"layers": 2, "base_model": "/home/me/minilm"}, "is not a Hugging Face model id: pass the namespace/name"),
    ],
)
def test_bad_input_is_a_clear_value_error(bert_model: SentenceTransformer, kwargs: dict, message: str) -> None:
    before = state(bert_model)
    with pytest.raises(ValueError, match=re.escape(message)):
        kale_st.prune_layers(bert_model, **kwargs)
    assert_same_state(before, bert_model)


def test_unknown_route(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown route 'queries'.*\['query', 'document'\]"):
        kale_st.prune_layers(tiny_router_model(tmp_path), 1, route="queries")


def test_model_without_transformer_module() -> None:
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "cat": 1}, unk_token="[UNK]"))
    static = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu")
    with pytest.raises(ValueError, match="no sentence_transformers Transformer module"):
        kale_st.prune_layers(static, 1)


def test_modernbert_must_keep_layer_zero(tmp_path: Path) -> None:
    model = tiny_model(tmp_path, "modernbert")
    with pytest.raises(ValueError, match=r"modernbert must keep layer\(s\) \[0\]"):
        kale_st.prune_layers(model, 2, strategy="top")


def test_unknown_architecture_layer_list(bert_model: SentenceTransformer, monkeypatch: pytest.MonkeyPatch) -> None:
    from kale_st import architectures

    monkeypatch.delitem(architectures.ARCHITECTURES, "bert")
    # Fallback: BERT's encoder.layer is the only ModuleList of length num_hidden_layers.
    assert kale_st.num_layers(kale_st.prune_layers(bert_model, 2)) == 2
    bert_model[0].auto_model.extra = torch.nn.ModuleList(torch.nn.Linear(1, 1) for _ in range(4))
    with pytest.raises(ValueError, match="Cannot find the transformer layer list.*Supported architectures: deberta-v2"):
        kale_st.prune_layers(bert_model, 2)


def test_the_source_is_named_by_its_hub_id_or_its_folder_name_never_its_path(tmp_path: Path) -> None:
    def source(folder: Path, card: str | None = None, **kwargs: object) -> str:
        tiny_model(tmp_path / "raw").save(str(folder))
        if card is not None:
            (folder / "README.md").write_text(card)
        pruned = kale_st.prune_layers(SentenceTransformer(str(folder), device="cpu"), 2, **kwargs)
        pruned.save(str(tmp_path / "pruned"))
        saved = SentenceTransformer(str(tmp_path / "pruned"), device="cpu")  # the lineage in config.json
        assert str(tmp_path) not in (tmp_path / "pruned" / "config.json").read_text()
        return kale_st.pruning_info(saved)["source_model"]

    assert source(tmp_path / "a" / "my-copy") == "my-copy"
    assert source(tmp_path / "b" / "my-copy", base_model="org/named") == "org/named"  # given
    snapshot = tmp_path / "hub" / "models--org--tiny-bert" / "snapshots" / ("0" * 40)
    assert source(snapshot) == "org/tiny-bert"  # a Hub cache snapshot
    usage = "```python\nmodel = SentenceTransformer('org/from-card')\n```\n"
    assert source(tmp_path / "c" / "copy", card=usage) == "org/from-card"  # the card's usage snippet
    trained = "---\ntags:\n- generated_from_trainer\n---\n" + usage  # trained since: the card's id is its base
    assert source(tmp_path / "d" / "copy", card=trained) == "copy"

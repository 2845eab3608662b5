"""kale_st.asymmetric, freeze_route and router_mapping on tiny models: train with ST's Trainer, then KALE on top."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, assert_same_state, state, tiny_model
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.modules import Router
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

import kale_st
from kale_st import AsymmetricPair

QUERIES = ["the cat is fast", "a dog on the layer", "dense model query", "slow retrieval of a document"]
DOCUMENTS = ["a cat and a dog", "the layer is slow", "query with a dense model", "retrieval for the document"]
PAIRS = Dataset.from_dict({"query": QUERIES * 4, "positive": DOCUMENTS * 4})


def route_state(model: SentenceTransformer, route: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model[0].sub_modules[route].state_dict().items()}


def train(model: SentenceTransformer, folder: Path, dataset: Dataset = PAIRS, **args: object) -> None:
    settings = dict(num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-3, report_to="none")
    training_args = SentenceTransformerTrainingArguments(
        str(folder), router_mapping=kale_st.router_mapping(dataset), use_cpu=True, **{**settings, **args}
    )
    loss = MultipleNegativesRankingLoss(model)
    SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss).train()
    model.eval()


def test_routes_are_a_pruned_copy_and_the_original_with_shared_pooling(tmp_path: Path) -> None:
    source = tiny_model(tmp_path / "m")
    before = state(source)
    model = kale_st.asymmetric(source, query_layers=2)
    assert_same_state(before, source)
    router, *shared = list(model)
    assert isinstance(router, Router) and [type(m).__name__ for m in shared] == ["Pooling", "Normalize"]
    assert [len(route) for route in router.sub_modules.values()] == [1, 1]  # the transformer only
    assert kale_st.num_layers(model, route="query") == 2 and kale_st.num_layers(model, route="document") == 4
    assert kale_st.pruning_info(model, route="query")["kept_layers"] == [0, 3]
    expected = source.encode_document(SENTENCES, convert_to_tensor=True)
    assert torch.equal(model.encode_document(SENTENCES, convert_to_tensor=True), expected)
    student = kale_st.prune_layers(source, 2)
    assert torch.equal(model.encode_query(SENTENCES, convert_to_tensor=True), student.encode_query(SENTENCES, convert_to_tensor=True))
    both = kale_st.asymmetric(source, query_layers=[1], document_layers=3, strategy="bottom", freeze_document=False)
    assert kale_st.pruning_info(both, "query")["kept_layers"] == [1]
    assert kale_st.pruning_info(both, "document")["kept_layers"] == [0, 1, 2]


def test_training_sends_queries_to_the_query_route_and_documents_to_the_document_route(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2)
    tokenizer = model[0].sub_modules["query"][0].tokenizer
    seen: dict[str, set[str]] = {"query": set(), "document": set()}
    for route, seen_texts in seen.items():
        hook = lambda module, args, texts=seen_texts: texts.update(
            tokenizer.batch_decode(args[0]["input_ids"], skip_special_tokens=True)
        )
        model[0].sub_modules[route][0].register_forward_pre_hook(hook)
    train(model, tmp_path / "out", num_train_epochs=1)
    assert seen["query"] == set(QUERIES)
    assert seen["document"] == set(DOCUMENTS)


def test_frozen_document_route_is_bit_identical_after_training_and_the_query_route_learns(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2)
    query_before, document_before = route_state(model, "query"), route_state(model, "document")
    documents_before = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    train(model, tmp_path / "out")
    assert_same_state(document_before, model[0].sub_modules["document"])
    assert torch.equal(model.encode_document(DOCUMENTS, convert_to_tensor=True), documents_before)
    assert any(not torch.equal(v, model[0].sub_modules["query"].state_dict()[k]) for k, v in query_before.items())


def test_unfrozen_document_route_trains_too(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2, freeze_document=False)
    before = route_state(model, "document")
    train(model, tmp_path / "out")
    after = model[0].sub_modules["document"].state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())


def test_frozen_route_stays_in_eval_mode_so_dropout_never_touches_documents(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2)
    for module in model[0].sub_modules["document"].modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    expected = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    model.train()
    features = model.preprocess(DOCUMENTS, task="document")
    with torch.no_grad():
        embeddings = model(features, task="document")["sentence_embedding"]
    assert torch.allclose(embeddings, expected, atol=1e-6)
    assert not any(p.requires_grad for p in model[0].sub_modules["document"].parameters())


def test_save_load_round_trip_and_the_pair_exports_as_two_plain_models(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2)
    train(model, tmp_path / "out", num_train_epochs=1)
    model.save(str(tmp_path / "router"))
    assert not list((tmp_path / "router").rglob("*.bin"))
    loaded = SentenceTransformer(str(tmp_path / "router"), device="cpu")
    for task in ("query", "document"):
        encode = lambda m: getattr(m, f"encode_{task}")(SENTENCES, convert_to_tensor=True)
        assert torch.equal(encode(loaded), encode(model)), task
    assert kale_st.num_layers(loaded, route="query") == 2

    pair = AsymmetricPair.from_router(model)
    pair.save(tmp_path / "pair")
    plain = AsymmetricPair.load(tmp_path / "pair")
    for part in (plain.query_model, plain.document_model):
        assert not any(isinstance(m, Router) for m in part)
    assert kale_st.num_layers(plain.query_model) == 2 and kale_st.num_layers(plain.document_model) == 4
    assert torch.equal(plain.encode_query(SENTENCES, convert_to_tensor=True), model.encode_query(SENTENCES, convert_to_tensor=True))
    assert torch.equal(
        plain.encode_document(SENTENCES, convert_to_tensor=True), model.encode_document(SENTENCES, convert_to_tensor=True)
    )


def test_kale_on_top_of_asymmetric_training_keeps_the_document_route(tmp_path: Path) -> None:
    model = kale_st.asymmetric(tiny_model(tmp_path / "m"), query_layers=2)
    train(model, tmp_path / "out", num_train_epochs=1)
    pair = kale_st.align(model, QUERIES * 4, layers=1, strategy="spread", epochs=2, batch_size=4,
                         output_dir=tmp_path / "pair")
    assert kale_st.pruning_info(pair.query_model)["kept_layers"] == [0]  # index in the original 4 layers
    assert kale_st.pruning_info(pair.query_model)["num_layers"] == 4
    loaded = AsymmetricPair.load(tmp_path / "pair")
    assert not any(isinstance(m, Router) for m in loaded.document_model)
    expected = model.encode_document(DOCUMENTS, convert_to_tensor=True)
    assert torch.equal(loaded.encode_document(DOCUMENTS, convert_to_tensor=True), expected)


def test_router_mapping_names_the_query_column_and_every_document_column() -> None:
    triplets = Dataset.from_dict({"question": ["q"], "pos": ["d"], "neg": ["n"], "score": [1.0]})
    assert kale_st.router_mapping(triplets) == {"question": "query", "pos": "document", "neg": "document"}
    custom = Dataset.from_dict({"text_a": ["d"], "text_b": ["q"]})
    assert kale_st.router_mapping(custom, query_column="text_b") == {"text_a": "document", "text_b": "query"}
    assert kale_st.router_mapping(DatasetDict(train=PAIRS)) == {"train": {"query": "query", "positive": "document"}}


@pytest.mark.parametrize(
    ("dataset", "kwargs", "message"),
    [
        (PAIRS, {"query_column": "question"}, r"no text column 'question'.*pass query_column="),
        (Dataset.from_dict({"query": ["q"], "label": [1]}), {}, "needs a query column and at least one document"),
        (["q", "d"], {}, "expects a datasets.Dataset"),
    ],
)
def test_router_mapping_errors_name_the_fix(dataset: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kale_st.router_mapping(dataset, **kwargs)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    source = tiny_model(tmp_path / "m")
    with pytest.raises(ValueError, match="already has a Router"):
        kale_st.asymmetric(kale_st.asymmetric(source, query_layers=2), query_layers=1)
    with pytest.raises(ValueError, match="already has 4 layers"):
        kale_st.asymmetric(source, query_layers=4)
    with pytest.raises(ValueError, match="has none"):
        kale_st.freeze_route(source)
    with pytest.raises(ValueError, match="Unknown route 'passage'"):
        kale_st.freeze_route(kale_st.asymmetric(source, query_layers=2), "passage")

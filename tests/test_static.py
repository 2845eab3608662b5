"""Zero layers: the static student (kale_st.static) and the check of where it works (kale_st.static_check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding

import kale_st
from kale_st import AsymmetricPair
from kale_st.recipe import recipe_for
from kale_st.static import export_model2vec, load_fastembed, static_student, unknown_token_id
from kale_st.static_check import static_check

from conftest import SENTENCES, assert_same_state, state, tiny_model

UNKNOWN_QUERY = "the cat ☃ is fast"  # the snowman is not in the tiny vocabulary: [UNK]


def test_static_student_from_input_embeddings(bert_model: SentenceTransformer) -> None:
    before = state(bert_model)
    padding = bert_model.tokenizer.backend_tokenizer.padding
    student = static_student(bert_model)
    assert_same_state(before, bert_model)
    assert bert_model.tokenizer.backend_tokenizer.padding == padding  # the teacher's tokenizer is not touched
    assert isinstance(student[0], StaticEmbedding) and isinstance(student[1], Normalize) and len(student) == 2
    table = student[0].embedding.weight
    words = bert_model[0].auto_model.get_input_embeddings().weight
    unknown = unknown_token_id(student[0].tokenizer)
    assert unknown == 1  # [UNK] in the tiny vocabulary
    assert torch.equal(table[unknown], torch.zeros(table.shape[1]))
    keep = [i for i in range(len(table)) if i != unknown]
    assert torch.equal(table[keep], words[keep])
    assert kale_st.num_layers(student) == 0
    assert kale_st.pruning_info(student) == {
        "source_model": "bert", "num_layers": 4, "kept_layers": [], "strategy": "static", "static_init": "embeddings",
    }
    embeddings = student.encode_query(SENTENCES, convert_to_tensor=True)
    assert embeddings.shape == (len(SENTENCES), 32)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(SENTENCES)))


def test_unknown_token_is_left_out(bert_model: SentenceTransformer, tmp_path: Path) -> None:
    student = static_student(bert_model)
    with_unknown, without = student.encode_query([UNKNOWN_QUERY, "the cat is fast"], convert_to_tensor=True)
    assert torch.allclose(with_unknown, without, atol=1e-6)
    student.save(str(tmp_path / "static"))
    loaded = SentenceTransformer(str(tmp_path / "static"), device="cpu")
    assert [type(m) for m in loaded] == [StaticEmbedding, Normalize]  # a plain sentence-transformers model
    queries = [UNKNOWN_QUERY, *SENTENCES]
    assert torch.allclose(loaded.encode_query(queries, convert_to_tensor=True),
                          student.encode_query(queries, convert_to_tensor=True), atol=1e-6)


def test_static_student_errors(bert_model: SentenceTransformer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown init"):
        static_student(bert_model, init="random")
    projected = SentenceTransformer(modules=[*bert_model, Dense(32, 16)], device="cpu")
    with pytest.raises(ValueError, match="projection"):
        static_student(projected)
    with pytest.raises(ValueError, match="first module"):
        static_student(static_student(bert_model))
    with pytest.raises(ValueError, match="which a static student .* does not have: use loss='kale'"):
        kale_st.align(bert_model, ["a query"], layers=0, loss="kale-tokens")


def test_align_zero_layers(bert_model: SentenceTransformer, tmp_path: Path) -> None:
    queries = [f"{a} {b} {c}" for a in SENTENCES for b in ("cat", "dog", "model") for c in ("fast", "slow", "layer")]
    teacher_before = state(bert_model)
    initial = static_student(bert_model)
    pair = kale_st.align(bert_model, queries, layers=0, max_steps=40, learning_rate=0.05, batch_size=8,
                         early_stopping=False, eval_queries=SENTENCES)
    assert_same_state(teacher_before, bert_model)
    student = pair.query_model
    assert isinstance(student[0], StaticEmbedding)
    meta = pair.metadata
    assert (meta["kept_layers"], meta["num_layers"], meta["strategy"], meta["training_steps"]) == ([], 4, "static", 40)
    assert meta["agreement"]["after"]["cosine"] > meta["agreement"]["before"]["cosine"] + 0.05
    teacher = bert_model.encode_query(SENTENCES, convert_to_tensor=True)
    cosine = lambda model: torch.nn.functional.cosine_similarity(model.encode_query(SENTENCES, convert_to_tensor=True),
                                                                 teacher).mean()
    assert cosine(student) > cosine(initial) + 0.05
    unknown = unknown_token_id(student[0].tokenizer)
    assert student[0].embedding.weight[unknown].abs().sum() == 0  # no gradient reached the unknown token

    pair.save(tmp_path / "pair", router=True)
    card = (tmp_path / "pair" / "query" / "README.md").read_text()
    assert "none of 4: a static embedding table" in card and "its input embeddings" in card
    loaded = AsymmetricPair.load(tmp_path / "pair", device="cpu")
    assert isinstance(loaded.query_model[0], StaticEmbedding)
    assert torch.allclose(loaded.encode_query(SENTENCES, convert_to_tensor=True),
                          pair.encode_query(SENTENCES, convert_to_tensor=True), atol=1e-6)
    router = SentenceTransformer(str(tmp_path / "pair" / "router"), device="cpu")
    assert torch.allclose(router.encode_query(SENTENCES, convert_to_tensor=True),
                          pair.encode_query(SENTENCES, convert_to_tensor=True), atol=1e-6)
    with pytest.raises(ValueError, match="first module is a Transformer"):
        pair.save(tmp_path / "onnx", onnx=True)


def test_zero_layer_recipe() -> None:
    recipe = recipe_for(0)
    assert recipe.batch_size >= 64 and recipe.learning_rate > recipe_for(2).learning_rate


def test_static_check(bert_model: SentenceTransformer, tmp_path: Path) -> None:
    documents = bert_model.encode_document([f"{s} {w}" for s in SENTENCES for w in ("cat", "dog", "fast")],
                                           convert_to_tensor=True)
    queries = ["the cat is not fast", "a dog on the document", "query and layer without a model"]
    same = static_check(bert_model, bert_model, queries, documents, k=3)
    assert same["overall"] == {"queries": 3, "overlap": 1.0, "cosine": 1.0, "low_overlap": 0.0}
    assert same["groups"]["negation"]["queries"] == 2 and same["groups"]["no negation"]["queries"] == 1
    assert all(0 <= row["order_sensitivity"] <= 2 for row in same["queries"])
    other = static_check(bert_model, tiny_model(tmp_path / "other", seed=1), queries, documents, k=3)
    assert other["overall"]["cosine"] < 0.99
    assert [row["overlap"] for row in other["queries"]] == sorted(row["overlap"] for row in other["queries"])
    with pytest.raises(ValueError, match="at least k"):
        static_check(bert_model, bert_model, queries, documents[:2], k=3)


def test_model2vec_init_and_export(bert_model: SentenceTransformer, tmp_path: Path) -> None:
    pytest.importorskip("model2vec.distill")
    from model2vec import StaticModel

    student = static_student(bert_model, init="model2vec")
    assert kale_st.pruning_info(student)["static_init"] == "model2vec"
    queries = [UNKNOWN_QUERY, *SENTENCES, "x"]
    expected = student.encode_query(queries, convert_to_numpy=True)
    folder = export_model2vec(student, tmp_path / "m2v")
    assert torch.allclose(torch.as_tensor(StaticModel.from_pretrained(folder).encode(queries)),
                          torch.as_tensor(expected), atol=1e-6)
    pytest.importorskip("fastembed")  # optional: serves the same files
    served = list(load_fastembed(folder).embed(queries))
    assert torch.allclose(torch.as_tensor(np.stack(served)), torch.as_tensor(expected), atol=1e-6)

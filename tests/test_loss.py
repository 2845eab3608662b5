"""KALELoss: the formula, its high-temperature limit, the online teacher, the token-level term, and its errors."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, tiny_model
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

import kale_st
from kale_st.loss import kale_divergence, token_distance
from kale_st.targets import TokenTargetsCollator, teacher_targets


def test_divergence_matches_the_formula() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 16) * 0.1, torch.randn(5, 16) * 0.1
    T = 0.1
    p_t, p_s = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T**2
    assert torch.allclose(kale_divergence(s, t, T), expected, atol=1e-7)
    assert kale_divergence(t, t, T).abs() < 1e-7
    assert kale_divergence(s, t, T) > 0


def test_at_reference_temperature_normalized_embeddings_give_half_the_centred_mse() -> None:
    torch.manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(8, 384), dim=-1)
    s = torch.nn.functional.normalize(t + 0.02 * torch.randn(8, 384), dim=-1)
    delta = s - t
    centred = (delta - delta.mean(-1, keepdim=True)).pow(2).sum(-1).mean() / 384
    assert torch.allclose(kale_divergence(s, t, 1.0), 0.5 * centred, rtol=1e-2)
    assert kale_divergence(s + 0.05, t, 0.2).sub(kale_divergence(s, t, 0.2)).abs() < 1e-6  # blind to a shift


def test_loss_config_and_citation(bert_model) -> None:
    loss = kale_st.KALELoss(bert_model, temperature=0.3)
    assert loss.get_config_dict() == {"temperature": 0.3}
    assert "2304.01016" in loss.citation and "Campos" in loss.citation


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan")])
def test_bad_temperature(bert_model, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kale_st.KALELoss(bert_model, temperature=temperature)


def test_non_finite_loss_is_a_clear_error(bert_model) -> None:
    loss = kale_st.KALELoss(bert_model)
    features = bert_model.preprocess(SENTENCES[:2])
    labels = torch.full((2, 32), float("nan"))
    with pytest.raises(FloatingPointError, match="diverged. Lower the learning rate"):
        loss([features], labels)


def test_online_teacher_is_left_as_given_and_student_learns(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    student = kale_st.prune_layers(teacher, 1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = kale_st.KALELoss(student, teacher=teacher)
    training = teacher.training
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, report_to="none",
        save_strategy="no", learning_rate=1e-3,
    )
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=Dataset.from_dict({"query": SENTENCES * 3}), loss=loss
    )
    trainer.train()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    # The teacher is used, never changed: no gradient flowed into it, and it is left trainable and in its own mode.
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters()) and teacher.training is training
    assert not all(torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


def test_online_teacher_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    other = tiny_model(tmp_path / "o")
    other.tokenizer.add_tokens(["kale"])
    with pytest.raises(ValueError, match="tokenizer .* differs from the student's"):
        kale_st.KALELoss(other, teacher=teacher)


def test_token_distance_is_the_mean_cosine_distance_over_real_tokens() -> None:
    torch.manual_seed(0)
    t = torch.randn(2, 4, 8)
    s = t + 0.3 * torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)
    expected = torch.cat([1 - cos[0, :3], 1 - cos[1, :2]]).mean()
    assert torch.allclose(token_distance(s, t, mask), expected, atol=1e-6)
    padded = s.clone()
    padded[mask == 0] = 100.0  # what padding positions hold does not count
    assert torch.allclose(token_distance(padded, t, mask), expected, atol=1e-6)
    assert token_distance(t, t, mask).abs() < 1e-6


def test_token_term_adds_the_weighted_token_distance(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    student = kale_st.prune_layers(teacher, 1)
    features = student.preprocess(SENTENCES[:3])
    plain = kale_st.KALELoss(student, teacher=teacher)([features], None)
    with_tokens = kale_st.KALELoss(student, teacher=teacher, token_weight=0.5)
    assert with_tokens.get_config_dict() == {"temperature": 0.2, "token_weight": 0.5}
    s, t = student(dict(features)), teacher(dict(features))
    distance = token_distance(s["token_embeddings"], t["token_embeddings"], features["attention_mask"])
    assert distance > 0.01
    assert torch.allclose(with_tokens([features], None), plain + 0.5 * distance, atol=1e-6)
    # An unpruned copy of the teacher has nothing to learn on either term.
    copy = kale_st.KALELoss(deepcopy(teacher), teacher=teacher, token_weight=1.0)
    assert copy([features], None).abs() < 1e-6


def test_stored_token_targets_give_the_online_teachers_loss(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    student = kale_st.prune_layers(teacher, 1)
    texts = SENTENCES[:4]  # of different lengths: the batch pads
    targets = teacher_targets(teacher, texts, token_embeddings=True).with_format("torch")
    batch = TokenTargetsCollator(preprocess_fn=student.preprocess)([targets[i] for i in range(len(texts))])
    mask = batch["query_attention_mask"]
    assert mask.sum() < mask.numel() and batch["label"]["token_embeddings"].shape == (*mask.shape, 32)
    features = {key.removeprefix("query_"): value for key, value in batch.items() if key.startswith("query_")}
    stored = kale_st.KALELoss(student, token_weight=1.0)([features], batch["label"])
    online = kale_st.KALELoss(student, teacher=teacher, token_weight=1.0)([features], None)
    assert stored > 0.01 and torch.allclose(stored, online, atol=1e-3)


def test_token_targets_from_another_tokenization_are_refused(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    targets = teacher_targets(teacher, SENTENCES[:2], token_embeddings=True)
    rows = [dict(targets[i], query=targets[i]["query"] + " and more words") for i in range(2)]
    with pytest.raises(ValueError, match="token counts differ"):
        TokenTargetsCollator(preprocess_fn=teacher.preprocess)(rows)


def test_token_term_errors_name_the_fix(bert_model) -> None:
    features = bert_model.preprocess(SENTENCES[:2])
    with pytest.raises(ValueError, match="pass teacher=<the frozen teacher>, or labels from teacher_targets"):
        kale_st.KALELoss(bert_model, token_weight=1.0)([features], torch.zeros(2, 32))
    with pytest.raises(ValueError, match="token_weight must be >= 0"):
        kale_st.KALELoss(bert_model, teacher=bert_model, token_weight=-1.0)

"""KALELoss: the formula, its high-temperature limit, the online teacher, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, tiny_model
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

import kale_st
from kale_st.loss import kale_divergence


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


def test_online_teacher_stays_frozen_and_student_learns(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    student = kale_st.prune_layers(teacher, 1)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    loss = kale_st.KALELoss(student, teacher=teacher)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, report_to="none",
        save_strategy="no", learning_rate=1e-3,
    )
    trainer = SentenceTransformerTrainer(
        model=student, args=args, train_dataset=Dataset.from_dict({"query": SENTENCES * 3}), loss=loss
    )
    trainer.train()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not all(torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())


def test_online_teacher_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "t")
    other = tiny_model(tmp_path / "o")
    other.tokenizer.add_tokens(["kale"])
    with pytest.raises(ValueError, match="tokenizer .* differs from the student's"):
        kale_st.KALELoss(other, teacher=teacher)

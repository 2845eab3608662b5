"""KALELoss: align a pruned student to its teacher with a temperature-scaled KL divergence."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

#: Default temperature, chosen for unit-normalized embeddings (see the KALELoss docstring).
DEFAULT_TEMPERATURE = 0.1
#: Default weight of the shift term (see the KALELoss docstring).
DEFAULT_SHIFT_WEIGHT = 0.5


class KALELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = DEFAULT_TEMPERATURE,
        shift_weight: float = DEFAULT_SHIFT_WEIGHT,
        teacher: SentenceTransformer | None = None,
    ) -> None:
        r"""KALE alignment loss (Campos et al., SustaiNLP 2023): the student ``model`` learns to give the
        same embedding dimension distribution as its teacher.

        .. math::
            \mathcal{L} = T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t / T) \,\|\, \mathrm{softmax}(s / T)\big)
                          + w \, \big(\bar{t} - \bar{s}\big)^2

        over the embedding dimensions, averaged over the batch, where ``t`` is the teacher embedding and
        ``s`` the student's. The softmax is blind to a shift of every dimension by the same constant, a
        direction cosine retrieval does see; the second term, the squared difference of the per-embedding
        means, pins that one direction (``shift_weight=0`` gives the paper's pure KL). For small
        differences ``T^2 KL`` is about half the mean squared error of the centred embeddings, so
        ``w = 0.5`` weighs the shift like every other direction.

        Temperature: the reference used ``T = 1`` for unnormalized CLS vectors. Unit-normalized embeddings
        such as all-MiniLM-L6-v2's have ``|x| < 0.2`` per dimension, so ``softmax(x)`` is almost uniform
        (its entropy is within 0.01 % of ``log d``) and the KL barely moves. The default ``T = 0.1`` is
        the value measured best on SciFact (see the README's alignment table); ``T = 0.02`` collapsed there.

        Args:
            model: The student (trained by the Trainer).
            temperature: Softmax temperature ``T`` (> 0).
            shift_weight: Weight ``w`` of the shift term (>= 0).
            teacher: A frozen teacher computing ``t`` online from the student's inputs (it must share the
                student's tokenizer). ``None``: ``t`` comes precomputed in ``labels`` (faster: encode once).

        Inputs:
            +---------------------+-----------------------------------------------------------------+
            | Texts               | Labels                                                          |
            +=====================+=================================================================+
            | one column, queries | teacher embeddings ``(batch_size, dim)``, or none with teacher  |
            +---------------------+-----------------------------------------------------------------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                import kale_st

                teacher = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                student = kale_st.prune_layers(teacher, 2)
                queries = ["what is dense retrieval", "how fast is a pruned encoder"]
                train = Dataset.from_dict({"query": queries, "label": teacher.encode(queries).tolist()})
                trainer = SentenceTransformerTrainer(model=student, train_dataset=train, loss=kale_st.KALELoss(student))
                trainer.train()
        """
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if not shift_weight >= 0:
            raise ValueError(f"shift_weight must be >= 0, got {shift_weight}.")
        self.model = model
        self.temperature = temperature
        self.shift_weight = shift_weight
        self.teacher = teacher
        if teacher is not None:
            _check_same_tokenizer(teacher, model)
            teacher.eval()
            teacher.requires_grad_(False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(f"KALELoss takes one text column (the queries), got {len(features)}.")
        student = self.model(features[0])["sentence_embedding"]
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(features[0])["sentence_embedding"]
        elif labels is None:
            raise ValueError("KALELoss needs teacher embeddings as labels, or a teacher=SentenceTransformer.")
        else:
            target = labels
        loss = kale_divergence(student, target.to(student.dtype), self.temperature, self.shift_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"KALELoss is {loss.item()}: training diverged. Lower the learning rate or raise the temperature "
                f"(now {self.temperature})."
            )
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "shift_weight": self.shift_weight}

    @property
    def citation(self) -> str:
        return """
@inproceedings{campos-etal-2023-quick,
    title = "Quick Dense Retrievers Consume {KALE}: Post Training {K}ullback{L}eibler Alignment of Embeddings for Asymmetrical dual encoders",
    author = "Campos, Daniel and Magnani, Alessandro and Zhai, ChengXiang",
    booktitle = "Proceedings of The Fourth Workshop on Simple and Efficient Natural Language Processing (SustaiNLP)",
    year = "2023",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/2304.01016",
}
"""


def kale_divergence(student: Tensor, teacher: Tensor, temperature: float, shift_weight: float = 0.0) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))`` over the last dimension plus the shift term, batch mean."""
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    shift = (student.mean(dim=-1) - teacher.mean(dim=-1)).pow(2).mean()
    return kl * temperature**2 + shift_weight * shift


def _check_same_tokenizer(teacher: SentenceTransformer, student: SentenceTransformer) -> None:
    a, b = teacher.tokenizer, student.tokenizer
    if type(a) is not type(b) or a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"The teacher's tokenizer ({type(a).__name__}, {len(a)} tokens) differs from the student's "
            f"({type(b).__name__}, {len(b)} tokens): an online teacher reads the student's token ids. "
            "Use a student pruned from the teacher, or precompute teacher embeddings as labels."
        )

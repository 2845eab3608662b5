"""KALELoss: align a pruned student to its teacher with a temperature-scaled KL divergence."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

#: Default temperature, chosen for unit-normalized embeddings (see the KALELoss docstring).
DEFAULT_TEMPERATURE = 0.2


#: BibTeX of the KALE paper (arXiv 2304.01016); also used by the model cards.
KALE_CITATION = """
@inproceedings{campos-etal-2023-quick,
    title = "Quick Dense Retrievers Consume {KALE}: Post Training {K}ullback{L}eibler Alignment of Embeddings for Asymmetrical dual encoders",
    author = "Campos, Daniel and Magnani, Alessandro and Zhai, ChengXiang",
    booktitle = "Proceedings of The Fourth Workshop on Simple and Efficient Natural Language Processing (SustaiNLP)",
    year = "2023",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/2304.01016",
}
"""


class KALELoss(nn.Module):
    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = DEFAULT_TEMPERATURE,
        teacher: SentenceTransformer | None = None,
        token_weight: float = 0.0,
    ) -> None:
        r"""KALE alignment loss (Campos et al., SustaiNLP 2023): the student ``model`` learns to give the
        same distribution over embedding dimensions as its teacher.

        .. math::
            \mathcal{L} = T^2 \, \mathrm{KL}\big(\mathrm{softmax}(t / T) \,\|\, \mathrm{softmax}(s / T)\big)

        over the embedding dimensions, averaged over the batch, where ``t`` is the teacher embedding and
        ``s`` the student's. With ``token_weight > 0`` a token-level term is added (not in the paper; off by
        default): ``token_weight`` times the mean cosine distance between the student's and the teacher's
        contextual token embeddings (the last layer's outputs, before pooling), over the non-padding tokens. The
        teacher's come from ``teacher``, run at every step, or precomputed in the labels
        (:func:`kale_st.targets.teacher_targets` with ``token_embeddings=True`` and
        :class:`kale_st.targets.TokenTargetsCollator`, as ``align(loss="kale-tokens")`` does).

        Temperature: the reference used ``T = 1`` for unnormalized CLS vectors. Unit-normalized embeddings
        such as all-MiniLM-L6-v2's have ``|x| < 0.22`` per dimension: at ``T = 1`` the softmax of a SciFact
        query is almost uniform (entropy 99.98 % of ``log d``, largest probability 1.16x uniform) and
        ``T^2 KL`` reduces to half the mean squared error of the mean-centred embeddings: plain MSE in
        disguise. Too low a temperature hurts: the softmax then peaks on the few large dimensions that all
        queries share; at ``T = 0.05`` a 1-layer student trained gently (lr 1e-4) collapsed onto that shared
        direction (pairwise cosine of test queries 0.90, teacher 0.12; nDCG@10 0.008). Measured on SciFact,
        2 layers, 10 epochs at lr 1e-3, nDCG@10: T=0.05 0.629, T=0.1 0.634, T=0.2 0.635, T=1 0.635. The default
        ``T = 0.2`` is the lowest temperature at the top of that range, so the loss still weighs the
        dimensions the teacher stresses (largest probability about 2x uniform).

        Args:
            model: The student (trained by the Trainer).
            temperature: Softmax temperature ``T`` (> 0).
            teacher: A teacher computing ``t`` online from the student's inputs, without gradients and in eval mode
                (it must share the student's tokenizer; it is left as it was given). ``None``: ``t`` comes precomputed in ``labels`` (faster: encode once).
            token_weight: Weight of the token-level term (>= 0). It needs the teacher's token embeddings (from
                ``teacher`` or in the labels) and a transformer student (a static student has no contextual tokens).

        Inputs:
            +---------------------+-----------------------------------------------------------------+
            | Texts               | Labels                                                          |
            +=====================+=================================================================+
            | one column, queries | teacher embeddings ``(batch_size, dim)``, or none with teacher  |
            |                     | (with token targets: a dict of ``sentence_embedding`` and       |
            |                     | ``token_embeddings``, from ``TokenTargetsCollator``)             |
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
        if not token_weight >= 0:
            raise ValueError(f"token_weight must be >= 0, got {token_weight}.")
        self.model = model
        self.temperature = temperature
        self.teacher = teacher
        self.token_weight = token_weight
        if teacher is not None:
            _check_same_tokenizer(teacher, model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(f"KALELoss takes one text column (the queries), got {len(features)}.")
        # Each model gets its own copy of the inputs: sentence-transformers modules add their outputs to the dict.
        output = self.model(dict(features[0]))
        student = output["sentence_embedding"]
        if self.teacher is not None:
            with torch.no_grad(), _eval_mode(self.teacher):
                taught = self.teacher(dict(features[0]))
        elif labels is None:
            raise ValueError("KALELoss needs teacher embeddings as labels, or a teacher=SentenceTransformer.")
        else:  # precomputed: the query embeddings, or a dict like the teacher's output (with token targets)
            taught = labels if isinstance(labels, dict) else {"sentence_embedding": labels}
        target = taught["sentence_embedding"]
        loss = kale_divergence(student.float(), target.float(), self.temperature)  # float32 under autocast too
        if self.token_weight > 0:
            if "token_embeddings" not in output:
                raise ValueError(f"token_weight={self.token_weight} needs a student with contextual token embeddings "
                                 "(a transformer); this one gives none (a static student?): use token_weight=0.")
            if "token_embeddings" not in taught:
                raise ValueError(f"token_weight={self.token_weight} needs the teacher's token embeddings: pass "
                                 "teacher=<the frozen teacher>, or labels from teacher_targets(..., token_embeddings="
                                 "True) through kale_st.targets.TokenTargetsCollator, or token_weight=0.")
            distance = token_distance(output["token_embeddings"], taught["token_embeddings"], output["attention_mask"])
            loss = loss + self.token_weight * distance
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"KALELoss is {loss.item()}: training diverged. Lower the learning rate or raise the temperature "
                f"(now {self.temperature})."
            )
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, **({"token_weight": self.token_weight} if self.token_weight else {})}

    @property
    def citation(self) -> str:
        return KALE_CITATION


def kale_divergence(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))`` over the last dimension, batch mean."""
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return kl * temperature**2


def token_distance(student: Tensor, teacher: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean cosine distance ``1 - cos(s_i, t_i)`` between token embeddings ``(batch, tokens, dim)``, over the tokens
    that ``attention_mask`` keeps (padding left out)."""
    distance = 1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    mask = attention_mask.to(distance.dtype)
    return (distance * mask).sum() / mask.sum()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) inside the block, its own mode back after it: the teacher, which the caller
    may go on training or serving, is never changed."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _check_same_tokenizer(teacher: SentenceTransformer, student: SentenceTransformer) -> None:
    a, b = teacher.tokenizer, student.tokenizer
    if type(a) is not type(b) or a.get_vocab() != b.get_vocab():
        raise ValueError(
            f"The teacher's tokenizer ({type(a).__name__}, {len(a)} tokens) differs from the student's "
            f"({type(b).__name__}, {len(b)} tokens): an online teacher reads the student's token ids. "
            "Use a student pruned from the teacher, or precompute teacher embeddings as labels."
        )

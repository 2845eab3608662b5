"""Probe: a relation term beside the paper's loss, measured on validation with ``tune_defaults.py --loss
kale-relations``; it lost (README "Defaults that transfer", levers; ``benchmarks/DEFAULTS.md``). Not part of the
package. (The intermediate-layer term first probed here is ``align(loss="kale-hidden")`` now.)

``kale-relations`` (:class:`RelationTermLoss`): each student query should rank the teacher's embeddings of the batch's
other queries as the teacher's query does (they stand in for the teacher-encoded documents it will search):
``T^2 KL`` over the softmax of those cosine similarities at ``T = 0.05`` (the scale 20 of sentence-transformers'
``MultipleNegativesRankingLoss``), from the stored targets.

    python benchmarks/tune_defaults.py --teacher minilm --kept 0,5 --pseudo 10000 --loss kale-relations --probe-weight 1 0.3
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from kale_st.loss import KALELoss, kale_divergence

RELATION_TEMPERATURE = 0.05


def relation_divergence(student: Tensor, teacher: Tensor, temperature: float = RELATION_TEMPERATURE) -> Tensor:
    """``T^2 KL`` between the teacher's and the student's softmax, over the batch's other queries ``j``, of the cosine
    similarity of query ``i`` to the teacher's embedding ``t_j``, batch mean."""
    keys = F.normalize(teacher, dim=-1)
    others = ~torch.eye(len(keys), dtype=torch.bool, device=keys.device)
    rows = len(keys), len(keys) - 1
    taught = (keys @ keys.T)[others].view(rows)
    learned = (F.normalize(student, dim=-1) @ keys.T)[others].view(rows)
    return kale_divergence(learned, taught, temperature)


class RelationTermLoss(KALELoss):
    """:class:`KALELoss` on stored targets plus ``weight`` times :func:`relation_divergence`."""

    def __init__(self, model: SentenceTransformer, temperature: float, weight: float = 1.0) -> None:
        super().__init__(model, temperature)
        self.weight = weight

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        (features,) = list(sentence_features)
        student, target = self.model(dict(features))["sentence_embedding"].float(), labels.float()
        return kale_divergence(student, target, self.temperature) + self.weight * relation_divergence(student, target)

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "relation_weight": self.weight}


def probe_losses(weight: float) -> dict[str, Any]:
    """The probe as an ``align`` loss builder (a ``kale_st.align.LOSSES`` entry)."""
    return {"kale-relations": lambda student, temperature: RelationTermLoss(student, temperature, weight)}

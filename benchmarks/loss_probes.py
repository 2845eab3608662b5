"""Probes: two terms beside the paper's loss, measured on validation with ``tune_defaults.py --loss``; both lost
(README "Defaults that transfer", levers; ``benchmarks/DEFAULTS.md``). Not part of the package.

``kale-relations`` (:class:`RelationTermLoss`): each student query should rank the teacher's embeddings of the batch's
other queries as the teacher's query does (they stand in for the teacher-encoded documents it will search):
``T^2 KL`` over the softmax of those cosine similarities at ``T = 0.05`` (the scale 20 of sentence-transformers'
``MultipleNegativesRankingLoss``), from the stored targets.

``kale-hidden`` (:class:`HiddenTermLoss`): a pruned student feeds each kept layer a hidden state the teacher never gave
it (in ``[0, 5]``, MiniLM's layer 5 reads layer 0's output instead of layer 4's). The term asks the student's hidden
state entering its ``i``-th layer (``i >= 1``) to match, token by token, the teacher's hidden state entering the layer
that student layer was copied from (mean cosine distance over the non-padding tokens), so each copied layer is fed
what it was trained on. The teacher runs at every step. (Its MPNet 12 -> 2 row was made at commit 4c0f13e, where the
term was ``align(loss="kale-hidden")`` with the teacher's hidden states stored with its targets, the same term: its
held-out MSE at step 50 matched this probe's, 0.0924.)

    python benchmarks/tune_defaults.py --teacher minilm --kept 0,5 --pseudo 10000 --loss kale-relations --probe-weight 1 0.3
    python benchmarks/tune_defaults.py --teacher minilm --kept 0,5 --pseudo 10000 --loss kale-hidden
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor

from kale_st.loss import KALELoss, _eval_mode, kale_divergence, token_distance
from kale_st.pruning import pruning_info

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


class HiddenTermLoss(KALELoss):
    """:class:`KALELoss` with an online ``teacher`` plus ``weight`` times the intermediate-layer term above."""

    def __init__(self, model: SentenceTransformer, temperature: float, teacher: SentenceTransformer,
                 weight: float = 1.0) -> None:
        super().__init__(model, temperature, teacher=teacher)
        self.weight = weight
        self.kept = pruning_info(model)["kept_layers"]
        model[0].auto_model.config.output_hidden_states = True  # the run's own student; the teacher: per call

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        (features,) = list(sentence_features)
        student = self.model(dict(features))
        with torch.no_grad(), _eval_mode(self.teacher), _hidden_states(self.teacher):
            teacher = self.teacher(dict(features))
        loss = kale_divergence(student["sentence_embedding"].float(), teacher["sentence_embedding"].float(),
                               self.temperature)
        mask = features["attention_mask"]
        for i, source in enumerate(self.kept[1:], start=1):  # the state entering student layer i / teacher layer source
            loss = loss + self.weight * token_distance(student["all_layer_embeddings"][i],
                                                       teacher["all_layer_embeddings"][source], mask)
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "hidden_weight": self.weight}


@contextmanager
def _hidden_states(model: SentenceTransformer) -> Iterator[None]:
    """``model`` outputs every layer's hidden states inside the block, its own setting back after it: the teacher, which
    encodes targets and later students are pruned from, is left as it was given."""
    config = model[0].auto_model.config
    before = config.output_hidden_states
    config.output_hidden_states = True
    try:
        yield
    finally:
        config.output_hidden_states = before


def probe_losses(teacher: SentenceTransformer, weight: float) -> dict[str, Any]:
    """The probes as ``align`` loss builders (``kale_st.align.LOSSES`` entries) for ``teacher``'s students."""
    return {
        "kale-relations": lambda student, temperature: RelationTermLoss(student, temperature, weight),
        "kale-hidden": lambda student, temperature: HiddenTermLoss(student, temperature, teacher, weight),
    }

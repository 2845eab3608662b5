"""KALELoss: align a pruned student to its teacher with a temperature-scaled KL divergence."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
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
        hidden_weight: float = 0.0,
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

        With ``hidden_weight > 0`` an intermediate-layer term is added (not in the paper; off by default): a pruned
        student feeds each kept layer a hidden state the teacher never gave it (in ``[0, 5]``, layer 5 reads layer 0's
        output instead of layer 4's). The term is ``hidden_weight`` times the token distance, as above, between the
        student's hidden state entering its ``i``-th layer (``i >= 1``) and the teacher's entering the layer it was
        copied from, summed over ``i``, so each copied layer is fed what it was trained on. The teacher's come from
        ``teacher`` or from the labels (``teacher_targets(..., hidden_layers=kept_layers[1:])``, as
        ``align(loss="kale-hidden")`` does).

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
            hidden_weight: Weight of the intermediate-layer term (>= 0). It needs a student made by
                :func:`kale_st.prune_layers` (its kept layers say which teacher state each layer should read).

        Inputs:
            +---------------------+-----------------------------------------------------------------+
            | Texts               | Labels                                                          |
            +=====================+=================================================================+
            | one column, queries | teacher embeddings ``(batch_size, dim)``, or none with teacher  |
            |                     | (with token targets: a dict of ``sentence_embedding`` and       |
            |                     | ``token_embeddings`` / ``all_layer_embeddings``, from           |
            |                     | ``TokenTargetsCollator``)                                       |
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
        if not hidden_weight >= 0:
            raise ValueError(f"hidden_weight must be >= 0, got {hidden_weight}.")
        self.hidden_weight = hidden_weight
        if hidden_weight > 0:
            from kale_st.pruning import pruning_info  # pruning imports the model cards, which import this module

            info = pruning_info(model)
            if not info or not info["kept_layers"]:
                raise ValueError(f"hidden_weight={hidden_weight} needs a transformer student made by prune_layers (its "
                                 "kept layers say which teacher state each layer reads): use hidden_weight=0.")
            self.hidden_layers = info["kept_layers"]
        if teacher is not None:
            _check_same_tokenizer(teacher, model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(f"KALELoss takes one text column (the queries), got {len(features)}.")
        # Each model gets its own copy of the inputs: sentence-transformers modules add their outputs to the dict.
        hidden = self.hidden_weight > 0
        with output_hidden_states(self.model) if hidden else nullcontext():
            output = self.model(dict(features[0]))
        student = output["sentence_embedding"]
        if self.teacher is not None:
            with torch.no_grad(), _eval_mode(self.teacher), output_hidden_states(self.teacher) if hidden else nullcontext():
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
        if hidden:
            loss = loss + self.hidden_weight * self._hidden_distance(output, taught)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"KALELoss is {loss.item()}: training diverged. Lower the learning rate or raise the temperature "
                f"(now {self.temperature})."
            )
        return loss

    def _hidden_distance(self, output: dict[str, Any], taught: dict[str, Any]) -> Tensor:
        """The intermediate-layer term: student state entering layer ``i`` against the teacher's entering layer
        ``hidden_layers[i]``, summed over ``i >= 1``."""
        states = taught.get("all_layer_embeddings")
        sources = self.hidden_layers[1:]
        if states is None or (isinstance(states, dict) and not set(sources) <= set(states)):
            raise ValueError(f"hidden_weight={self.hidden_weight} needs the teacher's hidden states entering layers "
                             f"{sources}: pass teacher=<the frozen teacher>, or labels from teacher_targets(..., "
                             f"hidden_layers={sources}) through kale_st.targets.TokenTargetsCollator.")
        mask = output["attention_mask"]
        return sum(token_distance(output["all_layer_embeddings"][i], states[source], mask)
                   for i, source in enumerate(sources, start=1))

    def get_config_dict(self) -> dict[str, Any]:
        weights = {name: getattr(self, name) for name in ("token_weight", "hidden_weight") if getattr(self, name)}
        return {"temperature": self.temperature, **weights}

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
def output_hidden_states(model: nn.Module) -> Iterator[None]:
    """``model``'s transformer outputs ``all_layer_embeddings`` (every layer's hidden states) inside the block, its
    own setting back after it: neither the teacher nor the saved student keeps the flag."""
    config = next(module for module in model.modules() if hasattr(module, "auto_model")).auto_model.config
    before = config.output_hidden_states
    config.output_hidden_states = True
    try:
        yield
    finally:
        config.output_hidden_states = before


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

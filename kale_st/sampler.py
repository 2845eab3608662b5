"""Length-grouped batches: queries of similar length train together, so little of each batch is padding.

A random batch of 64 queries pads every query to the longest one: on SciFact's queries and pseudo-queries (22 tokens
on average, up to 100) a random batch is 2.1x the tokens it holds, a batch grouped by token length 1.07x (grouped by
characters: 1.7x, as characters per token vary widely). ``LengthGroupedBatchSampler`` draws a random permutation,
sorts each mega-batch of 50 batches by length (transformers' ``get_length_grouped_indices``, the sampler behind the
Trainer's ``group_by_length``), cuts it into batches and shuffles the batches, so every epoch still visits each query
once, in random batches of near-equal length. ``align`` trains transformer students with it by default; pass
``batch_sampler="batch_sampler"`` to ``align`` for sentence-transformers' plain random batches.

Example:
    >>> sampler = partial(LengthGroupedBatchSampler, tokenizer=model.tokenizer)  # doctest: +SKIP
    >>> args = SentenceTransformerTrainingArguments("out", batch_sampler=sampler)  # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow.compute as pc
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import PreTrainedTokenizerBase
from transformers.trainer_pt_utils import get_length_grouped_indices

#: The text column whose lengths group the batches.
TEXT_COLUMN = "query"
#: Rows read (and tokenized) at a time to measure the lengths.
LENGTH_CHUNK = 10_000


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Random batches of queries of similar length, for ``SentenceTransformerTrainingArguments(batch_sampler=...)``.

    Args:
        dataset: The training dataset; its ``query`` column (else its first column) gives the lengths.
        batch_size, drop_last, valid_label_columns, generator, seed: As for sentence-transformers' samplers; the
            order is seeded by ``seed`` and the epoch, so a run and a resumed run draw the same batches.
        tokenizer: The student's tokenizer: lengths in tokens. ``None``: in characters.
        num_processes: Training processes (default: the process group's size, 1 without one). Under DDP the sampler
            groups global batches of ``batch_size * num_processes`` queries and yields each as ``num_processes``
            consecutive per-process batches, which accelerate deals out in turn: every step trains on the queries of
            the one-process run's step.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_processes: int | None = None,
    ) -> None:
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        self.num_processes = num_processes or _world_size()
        column = TEXT_COLUMN if TEXT_COLUMN in dataset.column_names else dataset.column_names[0]
        chunks = dataset.select_columns(column).with_format("arrow").iter(batch_size=LENGTH_CHUNK)
        self.lengths: list[int] = []
        for chunk in chunks:  # memory: one chunk of texts at a time
            if tokenizer is None:
                self.lengths += pc.utf8_length(chunk[column]).to_pylist()
            else:
                self.lengths += tokenizer(chunk[column].to_pylist(), return_length=True)["length"]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = self.batch_size * self.num_processes  # a global batch: the same queries as one process would draw
        order = get_length_grouped_indices(self.lengths, size, generator=generator)
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        # The order is drawn over every batch, so drop_last (the Trainer's default under DDP) only skips the short one.
        for position in torch.randperm(len(batches), generator=generator).tolist():
            batch = batches[position]
            if self.drop_last and len(batch) < size:
                continue
            for start in range(0, len(batch), self.batch_size):  # accelerate deals these to the processes in turn
                yield batch[start : start + self.batch_size]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size * self.num_processes)
        last = 0 if self.drop_last else -(-rest // self.batch_size)
        return full * self.num_processes + last


def _world_size() -> int:
    """The number of training processes (torchrun / accelerate launch), 1 without a process group."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1

"""LengthGroupedBatchSampler: every query once an epoch, near-equal token lengths, seeded, align's default."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, tiny_model
from datasets import Dataset

import kale_st
from kale_st.sampler import LengthGroupedBatchSampler

ALIGN = sys.modules["kale_st.align"]


def texts(count: int, seed: int = 0) -> list[str]:
    """Queries of 1 to 30 words: lengths vary as real queries' do."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(count)]


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    """Tokens a model computes when every batch is padded to its longest query."""
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_query_once_an_epoch_in_batches_of_the_given_size(drop_last: bool) -> None:
    dataset = Dataset.from_dict({"query": texts(1000)})
    sampler = LengthGroupedBatchSampler(dataset, batch_size=64, drop_last=drop_last, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (15 if drop_last else 16)
    seen = [i for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == (960 if drop_last else 1000)
    assert sorted(len(batch) for batch in batches)[-15:] == [64] * 15


def test_under_ddp_every_step_trains_on_the_one_process_batch() -> None:
    """Two processes at batch 32 (accelerate's ``BatchSamplerShard`` dealing the batches) see, step by step, the
    queries one process sees at batch 64."""
    from accelerate.data_loader import BatchSamplerShard

    dataset = Dataset.from_dict({"query": texts(1000)})
    single = list(LengthGroupedBatchSampler(dataset, batch_size=64, drop_last=False, seed=3))
    shared = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=False, seed=3, num_processes=2)
    ranks = [list(BatchSamplerShard(shared, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert len(shared) == len(list(shared)) == 2 * 15 + 2  # 1000 = 15 x 64 + 40, and 40 = 32 + 8
    full = [batch for batch in single if len(batch) == 64]  # accelerate skips the uneven pair (40 = 32 + 8)
    assert len(full) == len(ranks[0]) == len(ranks[1]) == 15
    for step, batch in enumerate(full):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)
    # The Trainer drops the last, short batch under DDP: the other batches keep the one-process order.
    dropping = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=True, seed=3, num_processes=2)
    dealt = list(BatchSamplerShard(dropping, num_processes=2, process_index=0))
    assert len(dropping) == 30 and dealt == ranks[0]
    # Without the dealing, each process would draw its own length groups of 32: other queries at every step.
    alone = list(LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=False, seed=3))
    assert sorted(alone[0] + alone[1]) != sorted(single[0])


def test_token_lengths_cut_the_padding_and_the_order_is_seeded(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    dataset = Dataset.from_dict({"query": texts(2000)})
    lengths = [len(ids) for ids in model.tokenizer(list(dataset["query"]))["input_ids"]]
    grouped = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=False, seed=3, tokenizer=model.tokenizer)
    assert grouped.lengths == lengths
    batches = list(grouped)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(dataset)).tolist()
    random_batches = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]
    assert padded_tokens(batches, lengths) < 0.75 * padded_tokens(random_batches, lengths)
    assert padded_tokens(batches, lengths) < 1.1 * sum(lengths)
    # Shuffled batches: not a run from longest to shortest.
    longest = [max(lengths[i] for i in batch) for batch in batches]
    assert longest[:10] != sorted(longest[:10], reverse=True)

    again = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=False, seed=3, tokenizer=model.tokenizer)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches
    other = LengthGroupedBatchSampler(dataset, batch_size=32, drop_last=False, seed=4, tokenizer=model.tokenizer)
    assert list(other) != batches


def test_lengths_follow_a_selection_of_the_dataset() -> None:
    dataset = Dataset.from_dict({"query": texts(300), "label": [[0.0]] * 300})
    rows = [5, 250, 17, 3]
    sampler = LengthGroupedBatchSampler(dataset.select(rows), batch_size=2, drop_last=False)
    assert sampler.lengths == [len(dataset[i]["query"]) for i in rows]


def test_align_trains_transformer_students_on_length_grouped_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[LengthGroupedBatchSampler] = []

    class Spy(LengthGroupedBatchSampler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ALIGN, "LengthGroupedBatchSampler", Spy)
    model = tiny_model(tmp_path / "m")
    queries = texts(40)
    kale_st.align(model, queries, layers=2, max_steps=2, batch_size=8)
    assert len(made) == 1 and made[0].lengths == [len(ids) for ids in model.tokenizer(queries)["input_ids"]]
    kale_st.align(model, queries, layers=2, max_steps=2, batch_size=8, batch_sampler="batch_sampler")  # plain batches
    assert len(made) == 1

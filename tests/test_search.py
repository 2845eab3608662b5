"""The data-driven ``search`` strategy: valid, deterministic, finds a known best layer set, recorded in the lineage."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, tiny_model, tiny_router_model
from sentence_transformers import SentenceTransformer

import kale_st
from kale_st.evaluation import load_beir
from kale_st.layer_search import search
from kale_st.strategies import STRATEGIES, LayerContext, select_layers

QUERIES = [f"{a} {b} {c}" for a in ("the cat", "a dog", "query") for b in ("is", "on", "with") for c in ("fast", "dense model", "layer", "document")]
SCIFACT = Path(__file__).parents[1] / "benchmarks" / "data" / "scifact"


def identity_like(model: SentenceTransformer, layers: tuple[int, ...]) -> SentenceTransformer:
    """Zero the output projections of BERT ``layers``: each then only re-normalizes its input (LayerNorm of a
    LayerNorm output), so the model computes its other layers alone and keeping those reproduces it."""
    with torch.no_grad():
        for index in layers:
            layer = model[0].auto_model.encoder.layer[index]
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


@pytest.fixture
def known_best(tmp_path: Path) -> SentenceTransformer:
    """A 4-layer model whose layers 0 and 3 do nothing: layers [1, 2] reproduce it, unlike spread's [0, 3]."""
    return identity_like(tiny_model(tmp_path / "m"), (0, 3))


def test_search_finds_the_layers_that_reproduce_the_model(known_best: SentenceTransformer) -> None:
    assert kale_st.prune_layers(known_best, 2).encode(SENTENCES).tolist() != known_best.encode(SENTENCES).tolist()
    pruned = kale_st.prune_layers(known_best, 2, strategy="search", queries=QUERIES)
    info = kale_st.pruning_info(pruned)
    assert info["kept_layers"] == [1, 2] and info["strategy"] == "search"
    torch.testing.assert_close(pruned.encode(SENTENCES, convert_to_tensor=True),
                               known_best.encode(SENTENCES, convert_to_tensor=True), atol=1e-3, rtol=0)
    best = info["search"]["best"]
    assert best[0] == {"layers": [1, 2], "score": pytest.approx(1, abs=0.01)}
    assert best[1]["score"] < best[0]["score"] - 0.02  # clearly ahead of the runner-up
    three = kale_st.pruning_info(kale_st.prune_layers(known_best, 3, strategy="search", queries=QUERIES))
    assert {1, 2} < set(three["kept_layers"])


@pytest.mark.parametrize("score", ["probe", "cosine"])
def test_both_scores_find_it_and_a_variant_is_one_line(
    score: str, known_best: SentenceTransformer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(STRATEGIES, "search-variant", partial(search, score=score, sample_size=24))
    info = kale_st.pruning_info(kale_st.prune_layers(known_best, 2, strategy="search-variant", queries=QUERIES))
    assert info["kept_layers"] == [1, 2]
    assert (info["strategy"], info["search"]["score"], info["search"]["num_queries"]) == ("search-variant", score, 24)


def test_search_is_valid_deterministic_and_records_what_it_measured(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    for keep in (1, 2, 3):
        first = kale_st.pruning_info(kale_st.prune_layers(model, keep, strategy="search", queries=QUERIES))
        layers = first["kept_layers"]
        assert layers == sorted(set(layers)) and len(layers) == keep and all(0 <= i < 4 for i in layers)
        if keep == 2:
            again = kale_st.pruning_info(kale_st.prune_layers(model, keep, strategy="search", queries=QUERIES))
            assert again == first | {"search": {**first["search"], "seconds": again["search"]["seconds"]}}
        report = first["search"]
        assert report["method"] == "exhaustive" and report["candidates_scored"] == math.comb(4, keep)
        assert report["num_queries"] == len(QUERIES) and report["best"][0]["layers"] == layers
        scores = [b["score"] for b in report["best"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == min(5, math.comb(4, keep))


def test_beam_search_beyond_the_exhaustive_limit(known_best: SentenceTransformer, monkeypatch) -> None:
    monkeypatch.setitem(STRATEGIES, "beam", partial(search, exhaustive_limit=0, beam_width=4))
    monkeypatch.setitem(STRATEGIES, "greedy", partial(search, exhaustive_limit=0, beam_width=1))
    beam = kale_st.pruning_info(kale_st.prune_layers(known_best, 2, strategy="beam", queries=QUERIES))["search"]
    assert beam["method"] == "beam (width 4)" and beam["candidates_scored"] == 4 + 6  # 4 single layers, then all pairs
    assert beam["best"][0]["layers"] == [1, 2]
    greedy = kale_st.pruning_info(kale_st.prune_layers(known_best, 2, strategy="greedy", queries=QUERIES))["search"]
    assert greedy["method"] == "beam (width 1)" and greedy["candidates_scored"] == 4 + 3  # the best single layer + 1


def test_search_needs_queries(bert_model: SentenceTransformer) -> None:
    with pytest.raises(ValueError, match=r"strategy 'search' .* pass queries="):
        kale_st.prune_layers(bert_model, 2, strategy="search")
    with pytest.raises(ValueError, match="pass queries="):
        select_layers("search", 2, 4)
    with pytest.raises(ValueError, match="at least 8 queries"):
        kale_st.prune_layers(bert_model, 2, strategy="search", queries=QUERIES[:5])
    with pytest.raises(ValueError, match="Unknown search score"):
        search(2, 4, LayerContext(bert_model, QUERIES), score="nope")


def test_a_data_driven_strategy_gets_the_model_and_queries(bert_model: SentenceTransformer, monkeypatch) -> None:
    seen = {}

    def shortest_queries_first(num_keep: int, num_layers: int, context: LayerContext | None = None) -> list[int]:
        seen.update(model=context.model, queries=list(context.queries), total=num_layers)
        return list(range(num_layers - num_keep, num_layers))

    monkeypatch.setitem(STRATEGIES, "mine", shortest_queries_first)
    monkeypatch.setitem(STRATEGIES, "plain", lambda num_keep, num_layers: [1])  # the two-argument kind still works
    pruned = kale_st.prune_layers(bert_model, 2, strategy="mine", queries=QUERIES)
    assert seen == {"model": bert_model, "queries": QUERIES, "total": 4}
    assert kale_st.pruning_info(pruned)["kept_layers"] == [2, 3] and "search" not in kale_st.pruning_info(pruned)
    assert kale_st.pruning_info(kale_st.prune_layers(bert_model, 1, strategy="plain"))["kept_layers"] == [1]


def test_lineage_survives_save_load_and_composes(known_best: SentenceTransformer, tmp_path: Path) -> None:
    three = kale_st.prune_layers(known_best, 3, strategy="search", queries=QUERIES)
    three.save(str(tmp_path / "three"))
    loaded = SentenceTransformer(str(tmp_path / "three"), device="cpu")
    assert kale_st.pruning_info(loaded) == json.loads(json.dumps(kale_st.pruning_info(three)))
    two = kale_st.pruning_info(kale_st.prune_layers(loaded, 2, strategy="search", queries=QUERIES))
    assert two["kept_layers"] == [1, 2] and two["num_layers"] == 4  # indices of the original 4-layer model
    assert two["search"]["best"][0]["layers"] == [1, 2]
    assert all(set(b["layers"]) <= set(kale_st.pruning_info(three)["kept_layers"]) for b in two["search"]["best"])


def test_search_keeps_modernbert_layer_zero(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m", "modernbert")
    one = kale_st.pruning_info(kale_st.prune_layers(model, 1, strategy="search", queries=QUERIES))
    two = kale_st.pruning_info(kale_st.prune_layers(model, 2, strategy="search", queries=QUERIES))
    assert one["kept_layers"] == [0] and one["search"]["candidates_scored"] == 1
    assert two["kept_layers"][0] == 0 and two["search"]["candidates_scored"] == 3  # [0, 1], [0, 2], [0, 3]


def test_search_on_a_router_query_route(tmp_path: Path) -> None:
    model = tiny_router_model(tmp_path / "m")
    pruned = kale_st.prune_layers(model, 2, strategy="search", route="query", queries=QUERIES)
    assert kale_st.num_layers(pruned, "query") == 2 and kale_st.num_layers(pruned, "document") == 4
    info = kale_st.pruning_info(pruned, "query")
    assert info["strategy"] == "search" and info["search"]["best"][0]["layers"] == info["kept_layers"]


def test_align_passes_its_queries_to_search_and_records_it(known_best: SentenceTransformer, tmp_path: Path) -> None:
    pair = kale_st.align(known_best, QUERIES, layers=2, strategy="search", max_steps=1, batch_size=8,
                         output_dir=tmp_path / "pair")
    meta = pair.metadata
    assert meta["kept_layers"] == [1, 2] and meta["strategy"] == "search"
    assert meta["layer_search"]["best"][0]["layers"] == [1, 2] and meta["layer_search"]["num_queries"] == len(QUERIES)
    loaded = kale_st.AsymmetricPair.load(tmp_path / "pair", device="cpu")
    assert loaded.metadata["layer_search"] == meta["layer_search"]
    assert kale_st.pruning_info(loaded.query_model)["search"] == meta["layer_search"]
    assert "`search`" in (tmp_path / "pair" / "query" / "README.md").read_text()


@pytest.mark.slow
def test_search_on_minilm_keeps_the_sets_that_align_best(minilm_path: str) -> None:
    model = SentenceTransformer(minilm_path, device="cpu")
    queries = list(load_beir(SCIFACT, "train").queries.values())
    # Measured after alignment (benchmarks/results/layer_choice_and_pseudo_queries.md): 1 layer [5] 0.603 vs [0] 0.487,
    # 2 layers [0, 5] 0.630 vs [4, 5] 0.617 (the plain cosine score picks [4, 5]).
    for layers, best in ((1, [5]), (2, [0, 5])):
        info = kale_st.pruning_info(kale_st.prune_layers(model, layers, strategy="search", queries=queries))
        assert info["kept_layers"] == best
        assert info["search"]["num_queries"] == 256 and info["search"]["candidates_scored"] == (6 if layers == 1 else 15)

"""kale_st.align on tiny models (and one short run on the real all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, assert_same_state, state, tiny_model, tiny_router_model
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator
from test_pseudo_queries import CORPUS
from test_recipe import held_out_slice, queries

import kale_st
from kale_st.evaluation import load_beir
from kale_st.recipe import held_out_size, recipe_for
from kale_st.targets import load_targets, teacher_targets

ALIGN = sys.modules["kale_st.align"]  # the module; kale_st.align is the function

SCIFACT = Path(__file__).parents[1] / "benchmarks" / "data" / "scifact"
QUERIES = [f"{a} {b} {c}" for a in ("the cat", "a dog", "query") for b in ("is", "on", "with") for c in ("fast", "dense model", "layer", "document")]
FAST = dict(epochs=2, batch_size=8, learning_rate=1e-3)


def weights(model: SentenceTransformer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_align_returns_an_aligned_student_and_the_untouched_document_model(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    before = state(model)
    pair = kale_st.align(model, QUERIES, layers=2, eval_queries=SENTENCES, warmup_steps=0, **FAST)
    assert pair.document_model is model
    assert_same_state(before, model)  # every tensor bit-identical
    assert kale_st.num_layers(pair.query_model) == 2
    agreement = pair.metadata["agreement"]
    assert agreement["after"]["mse_x100"] < agreement["before"]["mse_x100"]
    assert agreement["after"]["cosine"] > agreement["before"]["cosine"]
    assert pair.metadata["strategy"] == "search" and pair.metadata["num_queries"] == len(QUERIES)  # the default
    assert pair.metadata["kept_layers"] == pair.metadata["layer_search"]["best"][0]["layers"]
    assert pair.encode_query(SENTENCES).shape == pair.encode_document(SENTENCES).shape == (4, 32)
    assert torch.equal(pair.encode_document(SENTENCES, convert_to_tensor=True), model.encode(SENTENCES, convert_to_tensor=True))


def test_same_seed_same_student(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    a = weights(kale_st.align(model, QUERIES, seed=3, **FAST).query_model)
    b = weights(kale_st.align(model, QUERIES, seed=3, **FAST).query_model)
    c = weights(kale_st.align(model, QUERIES, seed=4, **FAST).query_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_token_loss_option_trains_on_stored_token_targets_and_says_so_in_the_card(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    before = state(model)
    pair = kale_st.align(model, QUERIES, loss="kale-tokens", output_dir=tmp_path / "pair", cache_dir=tmp_path / "c",
                         **FAST)
    assert pair.metadata["loss"] == "KALELoss" and pair.metadata["loss_config"] == {"temperature": 0.2, "token_weight": 1.0}
    assert_same_state(before, model)  # the teacher is used, not changed
    (folder,) = (tmp_path / "c").iterdir()  # the teacher's token embeddings were encoded once, with its targets
    assert "token_label" in load_targets(folder).column_names
    card = (tmp_path / "pair" / "query" / "README.md").read_text()
    assert "plus a token-level term (cosine distance of the contextual token embeddings, weight 1.0)" in card
    plain = kale_st.align(model, QUERIES, **FAST)
    assert plain.metadata["loss_config"] == {"temperature": 0.2}
    assert not torch.equal(plain.encode_query(SENTENCES, convert_to_tensor=True),
                           pair.encode_query(SENTENCES, convert_to_tensor=True))


def test_mse_loss_option_and_save_load_round_trip(tmp_path: Path) -> None:
    pair = kale_st.align(tiny_model(tmp_path / "m"), QUERIES, loss="mse", output_dir=tmp_path / "pair", **FAST)
    assert pair.metadata["loss"] == "MSELoss"
    assert sorted(os.listdir(tmp_path / "pair")) == ["document", "kale_pair.json", "query"]
    loaded = kale_st.AsymmetricPair.load(tmp_path / "pair", device="cpu")
    assert loaded.metadata == json.loads(json.dumps(pair.metadata))
    assert torch.equal(loaded.encode_query(SENTENCES, convert_to_tensor=True), pair.encode_query(SENTENCES, convert_to_tensor=True))
    assert torch.equal(
        loaded.encode_document(SENTENCES, convert_to_tensor=True), pair.encode_document(SENTENCES, convert_to_tensor=True)
    )
    assert kale_st.num_layers(SentenceTransformer(str(tmp_path / "pair" / "query"), device="cpu")) == 2
    with pytest.raises(ValueError, match="not empty"):
        pair.save(tmp_path / "pair")


def test_queries_from_files_and_datasets(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    (tmp_path / "q.txt").write_text("\n".join(QUERIES) + "\n\n")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps({"_id": str(i), "text": q}) for i, q in enumerate(QUERIES)))
    for source in (tmp_path / "q.txt", str(tmp_path / "q.jsonl"), Dataset.from_dict({"text": QUERIES})):
        assert kale_st.align(model, source, max_steps=1, batch_size=8).metadata["num_queries"] == len(QUERIES)


def test_router_model_query_route_is_the_teacher(tmp_path: Path) -> None:
    model = tiny_router_model(tmp_path / "m")
    before = state(model)
    pair = kale_st.align(model, QUERIES, layers=1, eval_queries=SENTENCES, **FAST)
    assert_same_state(before, model)
    assert kale_st.num_layers(pair.query_model) == 1
    assert pair.metadata["agreement"]["after"]["mse_x100"] < pair.metadata["agreement"]["before"]["mse_x100"]
    assert torch.equal(
        pair.encode_document(SENTENCES, convert_to_tensor=True), model.encode_document(SENTENCES, convert_to_tensor=True)
    )


@pytest.mark.parametrize(
    ("queries", "kwargs", "message"),
    [
        ([], {}, "queries is empty"),
        (["ok", 3], {}, r"queries\[1\] is a int"),
        (Dataset.from_dict({"question": ["a"]}), {}, r"no text column .* Pass column="),
        (Dataset.from_dict({"text": ["a"]}), {"query_column": "q"}, "has no column 'q'"),
        ("no/such/file.txt", {}, "does not exist"),
        (QUERIES, {"layers": 4}, "already has 4 layers"),
        (QUERIES, {"loss": "cosine"}, "Unknown loss"),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, queries, kwargs: dict, message: str) -> None:
    model = tiny_model(tmp_path / "m")
    with pytest.raises(ValueError, match=message):
        kale_st.align(model, queries, output_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_diverging_training_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    with torch.no_grad():
        model[0].auto_model.embeddings.word_embeddings.weight[5:].fill_(float("nan"))  # a broken teacher
    with pytest.raises(FloatingPointError, match="diverged"):
        kale_st.align(model, QUERIES, output_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_align_real_minilm_improves_agreement(minilm_path: str) -> None:
    model = SentenceTransformer(minilm_path, device="cpu")
    train_queries = list(load_beir(SCIFACT, "train").queries.values())  # held-out agreement on other *train* queries
    pair = kale_st.align(model, train_queries[:256], layers=2, max_steps=10, batch_size=32, eval_queries=train_queries[-64:])
    before, after = pair.metadata["agreement"]["before"], pair.metadata["agreement"]["after"]
    assert after["cosine"] > before["cosine"] + 0.2  # measured: 0.42 -> 0.73
    assert after["mse_x100"] < before["mse_x100"] / 1.5


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_model
    import kale_st
    out = Path(sys.argv[1])
    model = tiny_model(out / f"src-rank{os.environ['RANK']}", seed=0)  # one folder each: no write race
    queries = [f"the cat {i} dog" for i in range(32)]
    pair = kale_st.align(model, queries, layers=2, epochs=1, batch_size=4, output_dir=out / "pair")
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in pair.query_model.state_dict().values())).hexdigest()
    rank = torch.distributed.get_rank()
    saved = (out / "pair" / "query" / "model.safetensors").is_file()
    record = {"world": torch.distributed.get_world_size(), "digest": digest, "saved": saved, **pair.metadata}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


def test_align_under_torchrun_with_two_cpu_processes(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               str(script), str(tmp_path), str(Path(__file__).parent)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas in sync
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["training_steps"] for r in ranks] == [4, 4]  # 32 queries / (batch 4 x 2 processes): data was split
    assert all(r["saved"] for r in ranks)  # no rank returned before rank 0 finished writing
    loaded = kale_st.AsymmetricPair.load(tmp_path / "pair", device="cpu")
    assert kale_st.num_layers(loaded.query_model) == 2


def test_default_layer_choice_is_search_with_enough_queries(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    few = kale_st.align(model, QUERIES[:4], layers=2, max_steps=1).metadata  # too few for the search's probe
    assert (few["strategy"], few["kept_layers"]) == ("spread", [0, 3])
    # The search samples the real queries, not the pseudo-queries that join them.
    both = kale_st.align(model, QUERIES[:8], corpus=["the cat is fast. a dog on the document with a dense model."],
                         num_pseudo_queries=4, layers=2, max_steps=1).metadata
    assert both["strategy"] == "search" and both["layer_search"]["num_queries"] == 8


def test_recipe_defaults_depend_on_the_kept_layer_count(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    one = kale_st.align(model, QUERIES, layers=1, max_steps=1).metadata
    two = kale_st.align(model, QUERIES, layers=2, max_steps=1).metadata
    mine = kale_st.align(model, QUERIES, layers=1, epochs=3, learning_rate=1e-4, batch_size=8).metadata
    for meta, layers in ((one, 1), (two, 2)):
        assert (meta["learning_rate"], meta["batch_size"]) == (recipe_for(layers).learning_rate, recipe_for(layers).batch_size)
    assert (mine["epochs"], mine["learning_rate"], mine["batch_size"]) == (3, 1e-4, 8)
    assert mine["training_steps"] == 3 * 5 and mine["stop_reason"] == "epochs"  # 36 queries, batch 8: 5 steps an epoch


def test_streamed_queries_give_the_same_student_and_the_same_early_stopping_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model(tmp_path / "m")
    texts = queries(700)  # enough for a held-out slice
    (tmp_path / "q.txt").write_text("\n".join(texts) + "\n")
    slices: list[list[str]] = []

    class Spy(ALIGN.StoredTargetsMSEEvaluator):
        def __init__(self, queries: list[str], targets, **kwargs) -> None:
            slices.append(list(queries))
            super().__init__(queries, targets, **kwargs)

    monkeypatch.setattr(ALIGN, "StoredTargetsMSEEvaluator", Spy)
    settings = {"corpus": CORPUS, "num_pseudo_queries": 16, "max_steps": 2, "batch_size": 16, "seed": 5}
    pairs = [kale_st.align(model, source, **settings) for source in (texts, tmp_path / "q.txt", (t for t in texts))]
    # What the list-based align held out: the real queries, the new pseudo-queries, a seeded sample of them all.
    real = {text.lower() for text in texts}
    everything = texts + [q for q in kale_st.pseudo_queries(CORPUS, 16, seed=5) if q.lower() not in real]
    expected = held_out_slice(everything, held_out_size(len(everything)), seed=5)
    assert len(expected) == 36 and slices == [expected] * 3
    keys = ("num_queries", "real_queries", "pseudo_queries", "corpus_documents")
    assert [[pair.metadata[key] for key in keys] for pair in pairs] == [[len(everything), 700, 16, 10]] * 3
    first = weights(pairs[0].query_model)
    for pair in pairs[1:]:
        assert all(torch.equal(tensor, first[name]) for name, tensor in pair.query_model.state_dict().items())


def test_layer_search_reads_only_the_first_queries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ALIGN, "SEARCH_SAMPLE_LIMIT", 10)
    meta = kale_st.align(tiny_model(tmp_path / "m"), QUERIES, layers=2, max_steps=1, batch_size=8).metadata
    assert meta["strategy"] == "search" and meta["layer_search"]["num_queries"] == 10


def test_early_stopping_takes_the_teacher_embeddings_from_the_stored_targets(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "m")
    student = kale_st.prune_layers(teacher, 2)
    targets = teacher_targets(teacher, QUERIES)
    stored = ALIGN.StoredTargetsMSEEvaluator(targets["query"], np.asarray(targets["label"], dtype=np.float32), name="s")
    encoded = MSEEvaluator(QUERIES, QUERIES, teacher_model=teacher, name="s")
    assert stored(student)["s_negative_mse"] == pytest.approx(encoded(student)["s_negative_mse"], rel=1e-5)
    assert stored(teacher)["s_negative_mse"] == pytest.approx(0, abs=1e-9)

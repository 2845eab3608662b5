"""AsymmetricPair: to_router, save/load round trips, the folder layout and the generated model cards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import (
    EVALUATION,
    LATENCY,
    SENTENCES,
    assert_same_state,
    make_pair,
    python_block,
    state,
    tiny_model,
    tiny_router_model,
)
from huggingface_hub import ModelCard
from sentence_transformers import SentenceTransformer

import kale_st


def embeddings(model: SentenceTransformer, task: str) -> torch.Tensor:
    encode = model.encode_query if task == "query" else model.encode_document
    return encode(SENTENCES, convert_to_tensor=True)


def front_matter(folder: Path) -> dict:
    return ModelCard.load(folder / "README.md").data.to_dict()


@pytest.mark.parametrize("kind", ["plain", "router"])
def test_to_router_gives_the_pair_embeddings_and_leaves_the_pair_alone(tmp_path: Path, kind: str) -> None:
    model = tiny_model(tmp_path / "m") if kind == "plain" else tiny_router_model(tmp_path / "m")
    model.prompts = {"query": "query: ", "document": "passage: "}
    pair = make_pair(model)
    before = {"query": state(pair.query_model), "document": state(pair.document_model)}
    router = pair.to_router()
    for task in ("query", "document"):
        assert torch.equal(embeddings(router, task), embeddings(pair, task)), task
    assert not torch.equal(embeddings(router, "query"), embeddings(model, "query"))  # really the student
    assert_same_state(before["query"], pair.query_model)
    assert_same_state(before["document"], pair.document_model)
    pair_tensors = {p.data_ptr() for m in (pair.query_model, pair.document_model) for p in m.parameters()}
    assert not pair_tensors & {p.data_ptr() for p in router.parameters()}  # deep copies


def test_save_load_round_trip_and_layout(tmp_path: Path) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"))
    expected = {task: embeddings(pair, task) for task in ("query", "document")}
    folder = tmp_path / "kale-pair"
    pair.save(folder, router=True)

    assert sorted(p.name for p in folder.iterdir()) == ["document", "kale_pair.json", "query", "router"]
    assert not list(folder.rglob("*.bin")) and len(list(folder.rglob("*.safetensors"))) == 4  # router: 2 transformers
    assert json.loads((folder / "kale_pair.json").read_text()) == json.loads(json.dumps(pair.metadata))
    for part in ("query", "document", "router"):  # plain sentence-transformers folders, each with its card
        plain = SentenceTransformer(str(folder / part), device="cpu")
        assert (folder / part / "README.md").is_file()
        for task in ("query", "document") if part == "router" else (part,):
            assert torch.equal(embeddings(plain, task), expected[task]), (part, task)

    loaded = kale_st.AsymmetricPair.load(folder, device="cpu")
    assert loaded.metadata == pair.metadata
    for task in ("query", "document"):
        assert torch.equal(embeddings(loaded, task), expected[task])
    loaded.save(tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["document", "kale_pair.json", "query"]

    with pytest.raises(ValueError, match="overwrite=True"):
        pair.save(folder)
    pair.save(folder, overwrite=True)
    assert not (folder / "router").exists()


def test_cards_front_matter_survives_and_parses_back(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    model.model_card_data.license = "apache-2.0"
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    pair = make_pair(model, source_model="org/base-model", evaluation=EVALUATION, latency=LATENCY, plot=str(plot))
    folder = tmp_path / "kale-pair"
    pair.save(folder, router=True)

    query = front_matter(folder / "query")
    assert query["library_name"] == "sentence-transformers" and query["pipeline_tag"] == "sentence-similarity"
    assert {"kale", "asymmetric", "query-encoder", "pruned"} <= set(query["tags"])
    assert query["base_model"] == "org/base-model" and query["base_model_relation"] == "finetune"
    assert query["license"] == "apache-2.0"
    card = ModelCard.load(folder / "query" / "README.md")
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == EVALUATION["student"]
    assert {r.dataset_name for r in card.data.eval_results} == {"SciFact test"}

    text = card.content
    assert "**Encode queries with this model and documents with `kale-pair/document`.**" in text
    assert "no re-indexing is needed" in text
    assert "**Layers kept:** 2 of 4 (indices 0, 3, strategy `spread`)" in text
    assert "`KALELoss` at temperature 0.2, 20 epochs, learning rate 0.001" in text
    assert "1,234 queries" in text
    assert "| nDCG@10 | 0.6450 | 0.6340 | 98.3 % |" in text
    assert "8.1 ms with the teacher, 2.9 ms with this model:\n**2.80x faster** (2 CPU threads)" in text
    assert "![Teacher vs student](kale_plot.png)" in text
    assert (folder / "query" / "kale_plot.png").read_bytes() == plot.read_bytes()
    assert "@inproceedings{campos-etal-2023-quick" in text and "@inproceedings{reimers-2019-sentence-bert" in text

    document = front_matter(folder / "document")
    assert {"kale", "asymmetric", "document-encoder"} <= set(document["tags"])
    assert "base_model_relation" not in document and document["license"] == "apache-2.0"
    document_text = (folder / "document" / "README.md").read_text()
    assert "**unchanged**" in document_text and "`kale-pair/query`" in document_text

    router = front_matter(folder / "router")
    assert {"router", "query-encoder", "document-encoder"} <= set(router["tags"])
    assert router["base_model"] == "org/base-model" and router["base_model_relation"] == "finetune"
    assert ModelCard.load(folder / "router" / "README.md").data.eval_results[0].metric_value == 0.634
    assert (folder / "router" / "kale_plot.png").is_file()


def test_usage_snippets_in_the_cards_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"))
    pair.save(tmp_path / "kale-pair", router=True)
    monkeypatch.chdir(tmp_path)  # the cards name the folders kale-pair/query, kale-pair/document, kale-pair/router
    for part in ("query", "document", "router"):
        card = (tmp_path / "kale-pair" / part / "README.md").read_text()
        namespace: dict = {}
        exec(python_block(card), namespace)
        expected = pair.similarity(
            pair.encode_query(namespace["queries"], convert_to_tensor=True),
            pair.encode_document(namespace["documents"], convert_to_tensor=True),
        )
        assert torch.allclose(namespace["similarities"], expected, atol=1e-6), part
        printed = [float(x) for x in re.findall(r"-?\d+\.\d+", python_block(card).split("print(similarities)")[1])]
        assert torch.allclose(torch.tensor([printed]), expected, atol=1e-4), part  # the scores shown are real


def test_query_card_says_how_queries_and_layers_were_chosen(tmp_path: Path) -> None:
    search = {"method": "exhaustive", "candidates_scored": 15, "score": "probe", "num_queries": 128}
    pair = make_pair(tiny_model(tmp_path / "m"), query_source="pseudo", corpus_documents=5183, layer_search=search)
    pair.save(tmp_path / "pair")
    card = (tmp_path / "pair" / "query" / "README.md").read_text()
    assert "1,234 pseudo-queries cut from 5,183 corpus documents (no real queries)" in card
    assert "exhaustive over 15 layer sets, `probe` score on 128 queries" in card
    plain = make_pair(tiny_model(tmp_path / "m2"), query_source="queries")
    plain.save(tmp_path / "plain")
    card = (tmp_path / "plain" / "query" / "README.md").read_text()
    assert "1,234 queries (" in card and "pseudo" not in card and "layer sets" not in card


def test_a_pair_from_a_local_folder_writes_no_local_path(tmp_path: Path) -> None:
    source = tmp_path / "models" / "my-minilm"
    tiny_model(tmp_path / "raw").save(str(source))
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    pair = make_pair(SentenceTransformer(str(source), device="cpu"), evaluation=EVALUATION, plot=str(plot))
    pair.save(tmp_path / "out", router=True)
    meta = json.loads((tmp_path / "out" / "kale_pair.json").read_text())
    assert meta["source_model"] == "my-minilm" and meta["plot"] == "query/kale_plot.png"
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(files) > 20 and not [path for path in files if str(tmp_path).encode() in path.read_bytes()]
    loaded = kale_st.AsymmetricPair.load(tmp_path / "out")  # the plot is found again, in the pair folder
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / "query" / "kale_plot.png").read_bytes() == plot.read_bytes()


def test_a_local_copy_named_by_its_hub_id_links_to_the_hub(tmp_path: Path) -> None:
    from kale_st.hub import document_repo

    tiny_model(tmp_path / "raw").save(str(tmp_path / "copy"))
    model = SentenceTransformer(str(tmp_path / "copy"), device="cpu")
    pair = kale_st.align(model, SENTENCES * 2, max_steps=1, batch_size=4, base_model="org/base-model")
    pair.metadata["evaluation"] = EVALUATION
    pair.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "kale_pair.json").read_text())["source_model"] == "org/base-model"
    lineage = json.loads((tmp_path / "out" / "query" / "config.json").read_text())["kale_st_pruning"]
    assert lineage["source_model"] == "org/base-model"
    query = front_matter(tmp_path / "out" / "query")
    assert query["base_model"] == "org/base-model" and query["base_model_relation"] == "finetune"
    (entry,) = query["model-index"]  # one entry, named, with kale_st's scores
    assert entry["name"] == "KALE query encoder (2 of 4 layers) for org/base-model"
    assert [result["dataset"]["name"] for result in entry["results"]] == ["SciFact test"]
    assert "# org/base-model: document encoder" in (tmp_path / "out" / "document" / "README.md").read_text()
    assert document_repo(pair) == ("org/base-model", None)  # push_to_hub links it instead of uploading a copy

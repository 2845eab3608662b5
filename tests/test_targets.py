"""kale_st.targets: teacher targets encoded in chunks into a memory-mapped, cached Arrow dataset (one and two processes)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model
from datasets import List, Value

from kale_st.targets import load_targets, teacher_targets

TEXTS = [f"the {a} {b} is {c}" for a in ("cat", "dog", "model") for b in ("query", "layer", "document") for c in ("fast", "slow")]


def labels(dataset) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy")["label"])


def test_targets_are_the_teachers_embeddings_in_order_from_a_stream(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "m")
    targets = teacher_targets(teacher, (text for text in TEXTS), batch_size=4, chunk_size=5, cache_dir=tmp_path / "c")
    assert targets.column_names == ["query", "label"] and targets["query"][:] == TEXTS
    assert targets.features["label"] == List(Value("float32"), length=32)
    expected = teacher.encode_query(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(labels(targets), expected, atol=1e-6)
    assert targets.cache_files and all(Path(f["filename"]).is_file() for f in targets.cache_files)  # on disk, mapped
    assert isinstance(targets[0]["label"], list) and len(targets[0]["label"]) == 32  # what the Trainer's collator reads


def test_token_targets_are_the_teachers_token_embeddings_over_real_tokens(tmp_path: Path) -> None:
    teacher = tiny_model(tmp_path / "m")
    plain = teacher_targets(teacher, TEXTS, cache_dir=tmp_path / "c")
    targets = teacher_targets(teacher, iter(TEXTS), batch_size=4, chunk_size=5, cache_dir=tmp_path / "c",
                              token_embeddings=True)
    assert targets.column_names == ["query", "label", "token_label"]
    assert targets.features["token_label"] == List(List(Value("float16"), length=32))
    assert targets.cache_files[0]["filename"] != plain.cache_files[0]["filename"]  # its own cache entry
    np.testing.assert_allclose(labels(targets), labels(plain), atol=1e-6)  # the same query embeddings beside them
    for text, row in zip(TEXTS, targets.with_format("torch")):
        features = teacher.preprocess([text])
        expected = teacher(dict(features))["token_embeddings"][0]  # one text: no padding
        assert row["token_label"].shape == expected.shape == (features["attention_mask"].sum(), 32)
        torch.testing.assert_close(row["token_label"], expected, atol=2e-3, rtol=2e-3)  # float16 on disk


def test_cache_is_reused_and_keyed_by_teacher_and_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, cache = tiny_model(tmp_path / "m"), tmp_path / "cache"
    first = teacher_targets(teacher, TEXTS, cache_dir=cache)
    with monkeypatch.context() as patch:
        patch.setattr(teacher, "encode_query", lambda *a, **k: pytest.fail("encoded again despite the cache"))
        again = teacher_targets(teacher, iter(TEXTS), cache_dir=cache, chunk_size=3)
    assert again.cache_files == first.cache_files and labels(again).tobytes() == labels(first).tobytes()
    teacher_targets(teacher, TEXTS[:-1], cache_dir=cache)  # other texts
    other = tiny_model(tmp_path / "m2", seed=1)  # same architecture, other weights
    different = teacher_targets(other, TEXTS, cache_dir=cache)
    assert not np.allclose(labels(different), labels(first))
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 3 and all(name.startswith("targets-") for name in folders)  # no half-written leftovers
    info = json.loads((cache / folders[0] / "targets.json").read_text())
    assert info["processes"] == 1 and str(tmp_path) not in json.dumps(info)
    assert load_targets(cache / folders[0])["query"][:] in (TEXTS, TEXTS[:-1])


def test_without_cache_dir_the_temporary_folder_goes_with_the_dataset(tmp_path: Path) -> None:
    targets = teacher_targets(tiny_model(tmp_path / "m"), TEXTS)
    folder = Path(targets.cache_files[0]["filename"]).parents[1]
    assert folder.is_dir() and len(targets) == len(TEXTS)
    del targets
    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize(
    ("texts", "message"),
    [([], "texts is empty"), (["ok", 3], r"texts\[1\] is a int"), ("one string", "single string")],
)
def test_bad_texts_are_a_clear_error_and_leave_nothing(tmp_path: Path, texts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        teacher_targets(tiny_model(tmp_path / "m"), texts, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import numpy as np, torch
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_model
    from kale_st.targets import teacher_targets
    out = Path(sys.argv[1])
    teacher = tiny_model(out / f"m{sys.argv[3]}-rank{os.environ['RANK']}", seed=0)  # one folder each: no write race
    encoded = []
    encode = teacher.encode_query
    teacher.encode_query = lambda texts, **kw: (encoded.extend(texts), encode(texts, **kw))[1]
    texts = [f"the cat {i} dog" for i in range(45)]
    targets = teacher_targets(teacher, iter(texts), batch_size=4, chunk_size=8, cache_dir=out / "cache")
    rank = torch.distributed.get_rank()
    record = {"world": torch.distributed.get_world_size(), "encoded": encoded, "queries": targets["query"][:],
              "labels": np.asarray(targets.with_format("numpy")["label"]).tolist(), "files": targets.cache_files}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


def test_two_processes_share_the_encoding(tmp_path: Path) -> None:
    """Under torchrun (gloo, 2 CPU processes) each process encodes its half; both read the same complete files."""
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               str(script), str(tmp_path), str(Path(__file__).parent), "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    texts = [f"the cat {i} dog" for i in range(45)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["encoded"] == texts[:22] and ranks[1]["encoded"] == texts[22:]  # each its share, once
    assert ranks[0]["queries"] == ranks[1]["queries"] == texts and ranks[0]["files"] == ranks[1]["files"]
    teacher = tiny_model(tmp_path / "single", seed=0)
    single = teacher_targets(teacher, texts, cache_dir=tmp_path / "cache")  # the same fingerprint: read, not encoded
    assert single.cache_files == [{"filename": f["filename"]} for f in ranks[0]["files"]]
    expected = teacher.encode_query(texts, convert_to_numpy=True)
    np.testing.assert_allclose(np.asarray(ranks[0]["labels"], dtype=np.float32), expected, atol=1e-6)
    assert torch.equal(torch.tensor(ranks[0]["labels"]), torch.tensor(ranks[1]["labels"]))

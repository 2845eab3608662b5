"""ONNX export of a query encoder: float32 and int8 (dynamic quantization) files, run with ONNX Runtime.

The files follow sentence-transformers' ONNX layout: ``onnx/model.onnx`` (inputs ``input_ids``, ``attention_mask``
and, where the model takes it, ``token_type_ids``; output ``last_hidden_state``) next to the usual torch weights,
and ``onnx/model_<qint8|quint8>_<config>.onnx`` named as ``export_dynamic_quantized_onnx_model`` names them, with
the same quantization settings (:data:`QUANTIZATIONS`). They are made with PyTorch's ONNX exporter and ONNX
Runtime's quantizer, and loaded with :func:`load_onnx`, which runs the ONNX file in place of the
transformer and keeps the rest of the pipeline (prompts, pooling, normalization). sentence-transformers'
own ``backend="onnx"`` goes through optimum-onnx, which has no release for transformers 5 yet.

Needs the ``onnx`` extra: ``pip install "kale_st[onnx]"`` (onnx, onnxscript, onnxruntime).

Example:
    >>> from kale_st.onnx import export_onnx, load_onnx  # doctest: +SKIP
    >>> files = export_onnx(student, "student-onnx")  # quantization for this CPU  # doctest: +SKIP
    >>> files  # doctest: +SKIP
    {'fp32': 'onnx/model.onnx', 'int8': 'onnx/model_quint8_avx2.onnx', 'quantization': 'avx2'}
    >>> fast = load_onnx("student-onnx", file_name=files["int8"])  # a SentenceTransformer  # doctest: +SKIP
    >>> fast.encode_query(["does aspirin lower cancer risk?"])  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Transformer
from torch import nn


#: The float32 file, relative to the model folder.
ONNX_FILE = "onnx/model.onnx"
#: Inputs the exported graph may take, in this order (each one only if the model's forward accepts it).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
INSTALL_HINT = 'pip install "kale_st[onnx]"'


@dataclass(frozen=True)
class Quantization:
    """Dynamic int8 settings of optimum's ``AutoQuantizationConfig.<name>(is_static=False)``."""

    weights: str  # "QInt8" or "QUInt8" (onnxruntime.quantization.QuantType)
    reduce_range: bool = False


#: Dynamic quantization configs by CPU, as sentence-transformers / optimum define them (symmetric per-channel
#: weights, asymmetric uint8 activations). AVX2 uses uint8 weights: its int8 kernels can saturate.
QUANTIZATIONS: dict[str, Quantization] = {
    "arm64": Quantization("QInt8"),
    "avx2": Quantization("QUInt8"),
    "avx512": Quantization("QInt8"),
    "avx512_vnni": Quantization("QInt8"),
}


def quantized_file_name(config: str) -> str:
    """The int8 file of ``config``, as sentence-transformers names it: ``onnx/model_quint8_avx2.onnx``, ..."""
    if config not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization config {config!r}: use one of {sorted(QUANTIZATIONS)}.")
    return f"onnx/model_{QUANTIZATIONS[config].weights.lower()}_{config}.onnx"


def detect_quantization() -> str:
    """The quantization config for this CPU: ``arm64``, ``avx512_vnni``, ``avx512`` or ``avx2`` (the default)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = _cpu_flags()
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags or "avx512bw" in flags:
        return "avx512"
    return "avx2"


def export_onnx(
    model: SentenceTransformer | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    quantize: str | None = "auto",
    overwrite: bool = False,
) -> dict[str, str]:
    """Save ``model`` (a SentenceTransformer or its folder) to ``output_dir`` with its ONNX files.

    ``output_dir`` gets the plain sentence-transformers folder plus ``onnx/model.onnx`` (float32) and, unless
    ``quantize=None``, the int8 file of ``quantize`` (``"auto"``: :func:`detect_quantization`; or a name in
    :data:`QUANTIZATIONS`). It is written next to ``output_dir`` and renamed into place.

    Returns:
        ``{"fp32": "onnx/model.onnx", "int8": "onnx/model_quint8_avx2.onnx", "quantization": "avx2"}`` (paths
        relative to ``output_dir``; no ``int8`` / ``quantization`` without quantization), the ``file_name`` to
        give :func:`load_onnx`.
    """
    require_onnx()
    target = Path(output_dir)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ValueError(f"{str(target)!r} exists and is not empty: pass overwrite=True or a new folder.")
    if not isinstance(model, SentenceTransformer):
        model = SentenceTransformer(str(model), device="cpu")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save(str(scratch))
        files = write_onnx(model, scratch, quantize=quantize)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return files


def write_onnx(
    model: SentenceTransformer, folder: str | os.PathLike, *, quantize: str | None = "auto"
) -> dict[str, str]:
    """Write ``onnx/model.onnx`` and the int8 file of ``model``'s transformer into ``folder`` (the folder the model
    was saved to). Returns the files as :func:`export_onnx` does."""
    require_onnx()
    config = detect_quantization() if quantize == "auto" else quantize
    if config is not None and config not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization config {config!r}: use 'auto', None or one of {sorted(QUANTIZATIONS)}.")
    transformer = _transformer(model)
    fp32 = Path(folder) / ONNX_FILE
    fp32.parent.mkdir(parents=True, exist_ok=True)
    _export(transformer, fp32)
    files = {"fp32": ONNX_FILE}
    if config is not None:
        _quantize(fp32, Path(folder) / quantized_file_name(config), QUANTIZATIONS[config])
        files |= {"int8": quantized_file_name(config), "quantization": config}
    return files


def load_onnx(
    model_name_or_path: str | os.PathLike,
    *,
    file_name: str = ONNX_FILE,
    threads: int | None = None,
    spinning: bool = False,
    provider: str = "CPUExecutionProvider",
    **model_kwargs: Any,
) -> SentenceTransformer:
    """A SentenceTransformer whose transformer runs ``file_name`` with ONNX Runtime.

    ``model_name_or_path`` is a folder or Hub id with the ONNX files (:func:`export_onnx`); the rest of the pipeline
    (tokenizer, prompts, pooling, normalization) loads as usual. ``threads``: ONNX Runtime intra-op threads (default
    ``torch.get_num_threads()``, so that timings compare with torch); ``spinning``: let idle ONNX Runtime threads
    busy-wait for the next call (its default; off here, so that idle sessions do not take the CPU from other work,
    such as torch models timed in the same run). ``model_kwargs`` go to ``SentenceTransformer``.
    The model encodes; to save or train, load the torch model.
    """
    require_onnx(export=False)
    import onnxruntime as ort

    model_kwargs.setdefault("device", "cpu")
    model = SentenceTransformer(str(model_name_or_path), **model_kwargs)
    transformer = _transformer(model)
    root = Path(model_name_or_path)
    local = root / file_name
    if root.is_dir():
        if not local.is_file():
            found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.onnx"))
            raise ValueError(f"{str(local)!r} does not exist (ONNX files there: {found or 'none'}): see export_onnx.")
        path = str(local)
    else:
        from huggingface_hub import hf_hub_download

        hub = {key: model_kwargs[key] for key in ("revision", "token", "cache_folder") if key in model_kwargs}
        hub["cache_dir"] = hub.pop("cache_folder", None)
        path = hf_hub_download(str(model_name_or_path), file_name, **hub)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(path, sess_options=options, providers=[provider])
    runtime = ONNXRuntimeModel(session, transformer.model.config, file_name)
    transformer.model = runtime
    # What sentence-transformers derives from the model's forward when it loads one.
    transformer._declared_forward_params = set(inspect.signature(runtime.forward).parameters)
    transformer.model_forward_params = transformer._declared_forward_params
    transformer.backend = "onnx"
    return model


class ONNXRuntimeModel(nn.Module):
    """Stands in for the Hugging Face model inside sentence-transformers' ``Transformer``: runs an ONNX session."""

    def __init__(self, session: Any, config: Any, file_name: str = ONNX_FILE) -> None:
        super().__init__()
        self.session = session
        self.config = config
        self.file_name = file_name
        self.input_names = [i.name for i in session.get_inputs()]
        self.threads = session.get_session_options().intra_op_num_threads

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> dict[str, torch.Tensor]:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: given[name].detach().cpu().numpy() for name in self.input_names}
        (hidden,) = self.session.run([OUTPUT_NAME], feeds)
        return {OUTPUT_NAME: torch.from_numpy(hidden)}

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"This model runs {self.file_name} with ONNX Runtime and cannot be saved: save the torch model "
            "(SentenceTransformer(path)) and export it again with kale_st.onnx.export_onnx."
        )


def require_onnx(export: bool = True) -> None:
    """Raise a clear ``ImportError`` when the ``onnx`` extra is missing (``export=False``: only ONNX Runtime)."""
    needed = ("onnx", "onnxscript", "onnxruntime") if export else ("onnxruntime",)
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX {'export' if export else 'inference'} needs {', '.join(missing)}: {INSTALL_HINT}")


def _transformer(model: SentenceTransformer) -> Transformer:
    modules = list(model)
    if not modules or not isinstance(modules[0], Transformer):
        raise ValueError(
            "ONNX export and loading support models whose first module is a Transformer (not "
            f"{type(modules[0]).__name__ if modules else 'an empty model'}): export the query model of the pair."
        )
    return modules[0]


class _LastHiddenState(nn.Module):
    """The Hugging Face model with positional inputs and one output, as the exporter wants it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def _export(transformer: Transformer, path: Path) -> None:
    """Export the transformer to ``path`` with dynamic batch and sequence axes (PyTorch's dynamo exporter)."""
    hf_model = transformer.model
    accepted = set(inspect.signature(hf_model.forward).parameters)
    # Two texts of different lengths: the padded one makes the exporter keep the attention mask.
    texts = ["an example query", "a longer example query with padding"]
    sample = transformer.tokenizer(texts, padding=True, return_tensors="pt")
    names = [name for name in INPUT_NAMES if name in sample and name in accepted]
    batch, length = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    shapes = {name: {0: batch, 1: length} for name in names}
    was_training = hf_model.training
    hf_model.eval()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes on operators of packages that are not installed (torchvision)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
            torch.onnx.export(
                _LastHiddenState(hf_model),
                (),
                str(path),
                kwargs={name: sample[name].cpu() for name in names},
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        hf_model.train(was_training)
        exporter_log.setLevel(level)


def _quantize(source: Path, target: Path, config: Quantization) -> None:
    """Dynamic int8 quantization, as sentence-transformers' ``export_dynamic_quantized_onnx_model`` does it (through
    optimum's ``ORTQuantizer``): ONNX Runtime's ``ONNXQuantizer`` on every integer-op type, activation matmuls
    included, with the settings of ``config``."""
    import onnx
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    quantizer = ONNXQuantizer(
        model=onnx.load(str(source)),
        per_channel=True,
        reduce_range=config.reduce_range,
        mode=QuantizationMode.IntegerOps,
        static=False,
        weight_qType=getattr(QuantType, config.weights),
        activation_qType=QuantType.QUInt8,
        tensors_range=None,
        nodes_to_quantize=[],
        nodes_to_exclude=[],
        op_types_to_quantize=list(IntegerOpsRegistry),
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "EnableSubgraph": False,
                       "ForceSymmetric": False},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(target), False)


def _cpu_flags() -> set[str]:
    """CPU feature flags (lower case) from /proc/cpuinfo or macOS sysctl; empty when neither answers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    try:
        import subprocess

        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"], capture_output=True, text=True
        ).stdout
        return {flag.replace(".", "_") for flag in out.lower().split()}
    except OSError:
        return set()

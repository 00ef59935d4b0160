"""Quantize an exported model file: dynamic int8 or fp16, with onnxruntime's own tools.

int8 is onnxruntime's dynamic quantization: MatMul weights become symmetric int8 per output channel, activations are
quantized to uint8 at run time (the U8S8 kernels onnxruntime recommends for arm64 and x86 alike), and the embedding
Gather's table is stored as uint8 with one scale (onnxruntime quantizes a Gather's table as it does an activation).
Per-channel weights matter: with one scale per tensor, MiniLM fine-tuned on the samples agreed with fp32 on 98.8% of
corpus texts, per channel on 99.6% (the 99% bound is the task's, tasks.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from pema_export.stages import GraphEstimate, ModelFile, ShipContext, checked_figures
from pema_export.stages.formats import format_of

PRECISIONS = ("none", "int8", "fp16")


@dataclass(frozen=True)
class EmbeddingBytes:
    """The stored input-embedding table(s): what the vocabulary costs in the file after this stage."""

    names: tuple[str, ...]
    dtype: str
    rows: int
    bytes: int

    def as_manifest(self) -> dict:
        return {"initializers": list(self.names), "dtype": self.dtype, "rows": self.rows, "bytes": self.bytes}


@dataclass(frozen=True)
class QuantizeReport:
    precision: str
    embedding: EmbeddingBytes
    op_counts: dict[str, int]  # the quantized/cast ops now in the graph, so a reader sees what changed

    def as_manifest(self) -> dict:
        return {"precision": self.precision, "embedding": self.embedding.as_manifest(), "ops": self.op_counts}


def quantize_model(src: Path, dst: Path, precision: str, vocab_size: int) -> QuantizeReport:
    """Write ``src`` quantized to ``precision`` ("int8" or "fp16") as ``dst``; deterministic for the same ``src``."""
    if precision == "int8":
        quantize_int8(src, dst)
        watched = ("MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "QAttention", "QEmbedLayerNormalization")
    elif precision == "fp16":
        convert_fp16(src, dst)
        watched = ("Cast",)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    model = onnx.load(str(dst), load_external_data=False)
    counts = Counter(node.op_type for node in model.graph.node if node.op_type in watched)
    return QuantizeReport(precision, embedding_bytes(model, vocab_size), dict(sorted(counts.items())))


def quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_onnxruntime_logs():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference: their outputs are float
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute; inputs and outputs stay as they were (int64 ids in, float32 out) so callers do
    not change. Sentence pooling (pooling.py) stays fp32: the encoder's fp16 states are cast up before it."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    from pema_export.pooling import POOL_NODE_PREFIX

    model = OnnxModel(onnx.load(str(src)))
    pooling = [node.name for node in model.model.graph.node if node.name.startswith(POOL_NODE_PREFIX)]
    with quiet_onnxruntime_logs():
        model.convert_float_to_float16(keep_io_types=True, node_block_list=pooling)
    model.model.producer_name = "pema-export"
    onnx.save(model.model, str(dst))
    return dst


def embedding_bytes(model: onnx.ModelProto | Path, vocab_size: int) -> EmbeddingBytes:
    """The input-embedding table(s): rank-2 initializers with ``vocab_size`` rows, in whatever type they are stored."""
    if isinstance(model, Path):
        model = onnx.load(str(model), load_external_data=False)
    tables = [t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] == vocab_size]
    if not tables:
        return EmbeddingBytes((), "none", vocab_size, 0)
    dtypes = sorted({helper.tensor_dtype_to_np_dtype(t.data_type).name for t in tables})
    total = sum(int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in tables)
    return EmbeddingBytes(tuple(sorted(t.name for t in tables)), "/".join(dtypes), vocab_size, total)


@contextlib.contextmanager
def quiet_onnxruntime_logs():
    """onnxruntime's Python tools warn through many top-level loggers ("fusion_embedlayer", the root logger's
    "consider pre-processing"); the export's own messages say what matters. A root logger without handlers
    gets a NullHandler meanwhile, or logging.warning() would install a stderr handler for the whole process."""
    root = logging.getLogger()
    added = None
    if not root.handlers:
        added = logging.NullHandler()
        root.addHandler(added)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        if added is not None:
            root.removeHandler(added)


def weight_bytes(model, precision: str, skip: set[int] = frozenset()) -> int:
    """Bytes of a torch model's parameters (but ``skip``'s, by id) stored as ``precision`` ("none", "int8", "fp16")."""
    from torch import nn

    # int8 stores Linear weights (MatMul) as int8 with a scale and zero point per output channel, and embedding
    # tables (Gather) as uint8 with one scale and zero point; everything else stays fp32.
    linear = {id(m.weight): m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Linear)}
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = 0
    for parameter in {id(p): p for p in model.parameters() if id(p) not in skip}.values():
        if precision == "int8" and id(parameter) in linear:
            total += parameter.numel() + 5 * linear[id(parameter)]
        elif precision == "int8" and id(parameter) in embedding:
            total += parameter.numel() + 5
        elif precision == "fp16":
            total += parameter.numel() * 2
        else:
            total += parameter.numel() * 4
    return total


class Quantize:
    """The profile's number format (``quantize``, or ``--quantize``) when it is not fp32."""

    name = "quantize"
    order = 20

    def applies(self, target) -> bool:
        return target.quantize != "none"

    def label(self, target) -> str:
        return f"quantize {target.quantize}"

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]:
        from pema_export.verify import check_stage

        model, precision = models[-1], ctx.target.quantize
        quantized = ctx.work / f"{precision}.onnx"
        report = quantize_model(model.path, quantized, precision, ctx.shape.vocab_size)
        check = check_stage(f"quantize {precision}", quantized, model.reference, precision)
        ctx.log(f"quantize {precision}: embedding {report.embedding.bytes:,} bytes ({report.embedding.dtype}); {checked_figures(check)}")
        ctx.shipped.stages.append({"stage": f"quantize {precision}", **report.as_manifest(), "check": check.as_manifest()})
        fp32 = models if ctx.format.keeps_fp32 else []
        return [*fp32, replace(model, path=quantized, precision=precision)]

    def predict(self, graphs: list[GraphEstimate], target, model_type: str) -> list[GraphEstimate]:
        quantized = replace(graphs[-1], precision=target.quantize)
        return [*graphs, quantized] if format_of(target).keeps_fp32 else [quantized]


STAGE = Quantize()

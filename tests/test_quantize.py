"""The post-export stages as functions from a model file to a model file: same input, same bytes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from conftest import sample_head
from pema_export.pipeline import ExportOptions, run
from pema_export.stages.optimize import optimize_onnx
from pema_export.stages.ort_format import convert_to_ort, ort_embedding_bytes
from pema_export.stages.quantize import embedding_bytes, quantize_model


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory, tiny_bert) -> tuple[Path, int]:
    """A tiny BERT's fp32 ONNX as the pipeline exports it, and its kept vocabulary size."""
    corpus = sample_head(tmp_path_factory.mktemp("corpus"), "search_texts.txt", 40, name="texts.txt")
    out = tmp_path_factory.mktemp("fp32") / "model.onnx"
    # fallback: the plain pruned graph, without a remap table in front (what the later stages take as input)
    result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(tiny_bert), target="web", quantize="none", oov="fallback"))
    return out.parent / "onnx" / "model.onnx", result.manifest.vocab.kept


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantized_output_is_byte_deterministic(tmp_path, tiny_fp32, precision):
    fp32, vocab = tiny_fp32
    first = quantize_model(fp32, tmp_path / "a.onnx", precision, vocab)
    second = quantize_model(fp32, tmp_path / "b.onnx", precision, vocab)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert first == second


def test_optimized_and_then_quantized_output_is_byte_deterministic(tmp_path, tiny_fp32):
    fp32, vocab = tiny_fp32
    for name in ("a", "b"):
        optimize_onnx(fp32, tmp_path / f"{name}-opt.onnx", "bert", num_heads=2, hidden_size=32)
        quantize_model(tmp_path / f"{name}-opt.onnx", tmp_path / f"{name}.onnx", "int8", vocab)
    assert (tmp_path / "a-opt.onnx").read_bytes() == (tmp_path / "b-opt.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_int8_covers_the_embedding_gather(tmp_path, tiny_fp32):
    fp32, vocab = tiny_fp32
    report = quantize_model(fp32, tmp_path / "q.onnx", "int8", vocab)
    before = embedding_bytes(fp32, vocab)
    assert before.dtype == "float32" and before.bytes == vocab * 32 * 4
    assert report.embedding.dtype == "uint8" and report.embedding.bytes == vocab * 32
    assert report.embedding.names == ("embeddings.word_embeddings.weight_quantized",)
    # the table is looked up in uint8 and dequantized after the Gather
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    gathers = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == report.embedding.names[0]]
    assert len(gathers) == 1
    assert report.op_counts["MatMulInteger"] >= 6  # q, k, v, output, two FFN matrices per layer at least


def test_fp16_halves_the_embedding(tmp_path, tiny_fp32):
    fp32, vocab = tiny_fp32
    report = quantize_model(fp32, tmp_path / "h.onnx", "fp16", vocab)
    assert report.embedding.dtype == "float16" and report.embedding.bytes == vocab * 32 * 2
    graph = onnx.load(str(tmp_path / "h.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # the app's inputs do not change
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)


def test_ort_conversion_is_byte_deterministic_and_keeps_the_int8_embedding(tmp_path, tiny_fp32):
    fp32, vocab = tiny_fp32
    quantize_model(fp32, tmp_path / "q.onnx", "int8", vocab)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = convert_to_ort(tmp_path / "q.onnx", tmp_path / "a" / "model.ort", "Fixed", "arm")
    convert_to_ort(tmp_path / "q.onnx", tmp_path / "b" / "model.ort", "Fixed", "arm")
    if not first.layout_pinned:
        pytest.fail("could not disable address randomisation for the converter: .ort bytes would vary between runs")
    assert (tmp_path / "a" / "model.ort").read_bytes() == (tmp_path / "b" / "model.ort").read_bytes()
    assert (tmp_path / "a" / first.config_path.name).read_bytes() == (tmp_path / "b" / first.config_path.name).read_bytes()
    assert ort_embedding_bytes(tmp_path / "a" / "model.ort", vocab) == ("uint8", vocab * 32)

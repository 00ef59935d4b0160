"""Fidelity (the in-graph ids are tokenizer.json's ids) and parity (string-in outputs are the ids-in model's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pema_export.errors import VerificationError
from pema_export.string_input.graph import TEXT_INPUT
from pema_export.string_input.runtime import session

# String-in and ids-in run the same kernels on the same ids, so their outputs are expected to be equal bit for bit;
# the bound only absorbs a kernel that onnxruntime might pick differently for the two graphs (measured: 0.0).
PARITY_ATOL = 1e-5


@dataclass(frozen=True)
class FidelityReport:
    texts_checked: int
    tokens_checked: int
    mismatches: int = 0

    def as_manifest(self) -> dict:
        return {"texts_checked": self.texts_checked, "tokens_checked": self.tokens_checked, "mismatches": self.mismatches}


@dataclass(frozen=True)
class ParityReport:
    texts_checked: int
    max_abs_diff: float
    outputs: tuple[str, ...]

    def as_manifest(self) -> dict:
        return {"texts_checked": self.texts_checked, "max_abs_diff": self.max_abs_diff, "atol": PARITY_ATOL, "outputs": list(self.outputs)}


def tokenizer_only(string_model: Path) -> bytes:
    """The tokenizer part of a string-in .onnx (``text`` -> input_ids, attention_mask), node for node as it ships:
    every node those two outputs depend on, with its initializers."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(string_model))
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    wanted, needed, stack = ["input_ids", "attention_mask"], [], ["input_ids", "attention_mask"]
    seen = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        stack.extend(node.input)
    order = [node for node in graph.node if id(node) in seen]
    names = {name for node in order for name in node.input}
    initializers = [tensor for tensor in graph.initializer if tensor.name in names]
    extracted = helper.make_graph(
        order, "pema_tokenizer", [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch_size"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size", "sequence_length"]) for name in wanted], initializers,
    )
    return helper.make_model(extracted, opset_imports=model.opset_import, ir_version=model.ir_version).SerializeToString()


def check_fidelity(tokenizer_model: bytes | Path, tokenizer_json: dict, texts: Iterable[str], *, max_length: int,
                   batch_size: int = 256, what: str = "text") -> FidelityReport:
    """Every text's in-graph ids must equal Python tokenizers' on ``tokenizer_json`` (truncated to ``max_length``,
    as the ids-in path encodes); otherwise VerificationError naming the first text that differs.

    ``tokenizer_model``: a tokenizer-only model (``tokenizer_only``, ``tokenizer_model``) as bytes or a path."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(json.dumps(tokenizer_json))
    reference.no_padding()
    reference.enable_truncation(max_length)
    runner = session(tokenizer_model if isinstance(tokenizer_model, bytes) else Path(tokenizer_model))
    checked = tokens = 0
    batch: list[str] = []

    def compare(batch: list[str]) -> int:
        ids, mask = runner.run(["input_ids", "attention_mask"], {TEXT_INPUT: np.array(batch, dtype=object)})
        lengths = mask.sum(axis=1)
        for row, (text, encoding) in enumerate(zip(batch, reference.encode_batch(batch))):
            expected = encoding.ids
            if lengths[row] != len(expected) or ids[row, : lengths[row]].tolist() != expected:
                got = ids[row, : lengths[row]].tolist()
                first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                raise VerificationError(
                    f"in-graph tokenizer fidelity failed on {what} {text[:80]!r}: from token {first} the graph gives "
                    f"{got[first:first + 8]}, tokenizer.json {expected[first:first + 8]}"
                )
        return int(lengths.sum())

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            tokens += compare(batch)
            checked += len(batch)
            batch = []
    if batch:
        tokens += compare(batch)
        checked += len(batch)
    return FidelityReport(texts_checked=checked, tokens_checked=tokens)


def check_string_parity(string_model: Path, ids_model: Path, tokenizer_json: dict, texts: list[str], *, max_length: int,
                        pad_id: int, batch_size: int = 1, atol: float = PARITY_ATOL) -> ParityReport:
    """Run the string-in model on ``texts`` and the ids-in model on tokenizers' ids for them, padded the same way,
    in the same batches; every output they share must agree within ``atol`` on real tokens (padded positions are
    not read). One text per run by default, as an app calls the model."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(json.dumps(tokenizer_json))
    reference.no_padding()
    reference.enable_truncation(max_length)
    with_text, with_ids = session(string_model), session(ids_model)
    id_inputs = {i.name for i in with_ids.get_inputs()}
    names = [o.name for o in with_ids.get_outputs() if o.name in {s.name for s in with_text.get_outputs()}]
    worst = 0.0
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encodings = reference.encode_batch(batch)
        width = max(len(e.ids) for e in encodings)
        input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        mask = np.zeros_like(input_ids)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        want = with_ids.run(names, {k: v for k, v in feeds.items() if k in id_inputs})
        got = with_text.run(names, {TEXT_INPUT: np.array(batch, dtype=object)})
        for name, a, b in zip(names, got, want):
            if a.shape != b.shape:
                raise VerificationError(f"string-in parity failed on text {batch[0][:80]!r}: {name} has shape {a.shape}, ids-in {b.shape}")
            error = np.abs(a.astype(np.float64) - b.astype(np.float64))
            if error.ndim == 3:
                error = np.where(mask[:, :, None].astype(bool), error, 0.0)
            per_text = error.reshape(len(batch), -1).max(axis=1) if error.size else np.zeros(len(batch))
            if per_text.max() > atol:
                row = int(per_text.argmax())
                raise VerificationError(
                    f"string-in parity failed on text {batch[row][:80]!r}: {name} differs from the ids-in model by {per_text[row]:.3g} > {atol:g}"
                )
            worst = max(worst, float(per_text.max()))
    return ParityReport(texts_checked=len(texts), max_abs_diff=worst, outputs=tuple(names))

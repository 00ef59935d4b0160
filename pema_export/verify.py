"""Prove, on real corpus texts, that the bundle answers exactly as the fine-tuned model does. Raise on failure.

(a) tokenization fidelity: the pruned tokenizer's ids == the original tokenizer's ids mapped old -> new;
(b) output parity: onnxruntime on the exported graph vs the PyTorch model on the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from torch import nn

from pema_export.corpus import batched
from pema_export.errors import VerificationError
from pema_export.models import Pooling
from pema_export.pooling import pool_torch
from pema_export.tasks import SENTENCE_OUTPUT, CosineCloseness, Task, Top1Agreement
from pema_export.train import pad_batch
from pema_export.vocab import KeptVocab

PARITY_SAMPLE = 1000  # texts checked for output parity: all of them when the corpus has fewer
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class FidelityReport:
    texts_checked: int
    tokenization_mismatches: int
    texts_with_dropped_tokens: int  # skipped: a dropped token re-segments by design (min-count > 1)


@dataclass(frozen=True)
class ParityReport:
    texts_checked: int
    max_abs_diff: float
    outputs: tuple[str, ...]


def check_tokenization(original: Tokenizer, pruned: Tokenizer, kept: KeptVocab, texts: Iterable[str]) -> FidelityReport:
    """Every text whose tokens were all kept must get exactly the original ids, renumbered."""
    id_map = kept.id_map
    checked = dropped = 0
    for batch in batched(texts, 1024):
        for text, before, after in zip(
            batch, original.encode_batch(batch), pruned.encode_batch(batch)
        ):
            expected = id_map[np.asarray(before.ids, dtype=np.int64)]
            if (expected < 0).any():
                dropped += 1
                continue
            checked += 1
            if expected.tolist() != after.ids:
                raise VerificationError(
                    f"tokenization fidelity failed on corpus text {text[:80]!r}: "
                    f"pruned ids {after.ids[:12]} != original ids mapped {expected.tolist()[:12]}"
                )
    return FidelityReport(texts_checked=checked, tokenization_mismatches=0, texts_with_dropped_tokens=dropped)


def torch_reference(model: nn.Module, task: Task, pooling: Pooling | None) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """The fine-tuned PyTorch model as a function of (input_ids, attention_mask) -> {onnx output name: array}: the
    task's outputs, and the sentence vector when the model pools."""

    @torch.no_grad()
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
        model.eval()
        result = model(input_ids=input_ids, attention_mask=attention_mask)
        outputs = {name: getattr(result, name).numpy() for name in task.outputs}
        if pooling is not None:
            outputs[SENTENCE_OUTPUT] = pool_torch(pooling, result.last_hidden_state, attention_mask).numpy()
        return outputs

    return forward


def check_parity(
    onnx_path: Path,
    reference: Callable[[torch.Tensor, torch.Tensor], dict],
    pruned: Tokenizer,
    texts: list[str],
    pad_id: int,
    atol: float = PARITY_ATOL,
    batch_size: int = 32,
) -> ParityReport:
    """Run both sides on the same padded batches; fail naming the first text whose outputs differ by more than atol.

    ``pruned`` truncates as the app will (``--max-length``).
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for batch in batched(texts, batch_size):
        ids = [enc.ids for enc in pruned.encode_batch(batch)]
        input_ids, attention_mask = pad_batch(ids, pad_id)
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        got = dict(zip(output_names, session.run(output_names, feeds)))
        expected = reference(input_ids, attention_mask)
        valid = attention_mask.numpy().astype(bool)
        for name, want in expected.items():
            error = np.abs(got[name] - want)
            if error.ndim == 3:  # per-token states: padding positions are not outputs anyone reads
                error = np.where(valid[:, :, None], error, 0.0)
            diff = error.reshape(len(batch), -1).max(axis=1)
            if diff.max() > atol:
                row = int(diff.argmax())
                raise VerificationError(
                    f"output parity failed on corpus text {batch[row][:80]!r}: {name} differs by {diff[row]:.3g} > {atol:g}"
                )
            worst = max(worst, float(diff.max()))
    return ParityReport(texts_checked=len(texts), max_abs_diff=worst, outputs=tuple(output_names))


# --- Post-export stages (optimize, quantize, convert): each result against the fp32 ONNX on the same corpus sample.

STAGE_ATOL = PARITY_ATOL  # a stage that keeps fp32 (fusion, ORT conversion) must answer as the fp32 ONNX does


@dataclass(frozen=True)
class OnnxReference:
    """The fp32 ONNX model's outputs on the corpus sample, computed once and compared with every later stage, and
    the bound a reduced-precision stage is held to (the task's: tasks.Task.quantized_bound)."""

    texts: list[str]
    feeds: list[dict[str, np.ndarray]]  # one padded batch per entry
    outputs: list[dict[str, np.ndarray]]
    bound: Top1Agreement | CosineCloseness


@dataclass(frozen=True)
class StageCheck:
    stage: str
    precision: str  # "fp32", "int8" or "fp16": which bound applies
    texts_checked: int
    max_abs_diff: float
    top1_agreement: float | None = None
    min_cosine: float | None = None
    mean_cosine: float | None = None
    bound: str = ""

    def as_manifest(self) -> dict:
        entry = {
            "compared_with": "fp32 ONNX",
            "texts_checked": self.texts_checked,
            "precision": self.precision,
            "max_abs_diff": self.max_abs_diff,
        }
        for key in ("top1_agreement", "min_cosine", "mean_cosine"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        entry["bound"] = self.bound
        return entry


def onnx_reference(fp32_path: Path, pruned: Tokenizer, texts: list[str], pad_id: int, bound: Top1Agreement | CosineCloseness,
                   batch_size: int = 1) -> OnnxReference:
    """Run the fp32 ONNX model on ``texts`` (tokenized as the app will), one text per run by default.

    One text per run is how an on-device app calls the model, and it matters for int8: dynamic quantization picks
    one activation scale per tensor, so in a padded batch every text's scale depends on its neighbours (MiniLM on
    the samples: 99.6% top-1 agreement one by one, 98.8% in batches of 32).
    """
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    feeds, outputs = [], []
    for batch in batched(texts, batch_size):
        input_ids, attention_mask = pad_batch([enc.ids for enc in pruned.encode_batch(batch)], pad_id)
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in input_names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append(feed)
        outputs.append(dict(zip(output_names, session.run(output_names, feed))))
    return OnnxReference(texts=list(texts), feeds=feeds, outputs=outputs, bound=bound)


def check_stage(stage: str, candidate: Path, reference: OnnxReference, precision: str, text_input: bool = False) -> StageCheck:
    """Compare ``candidate`` (.onnx or .ort) with the fp32 ONNX; raise naming ``stage`` when it misses its bound.

    fp32 stages: every output within STAGE_ATOL. int8/fp16 stages: the reference's bound (top-1 agreement, or the
    cosine of the sentence vector or of the token states of the text's real tokens). Padded positions are never
    compared: fused attention leaves them undefined and no app reads them. ``text_input``: the candidate takes the
    texts themselves (the in-graph tokenizer, stages/string_input.py), through onnxruntime-extensions.
    """
    try:
        if text_input:
            from pema_export.string_input import session as string_session

            session = string_session(candidate)
        else:
            session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types; the stage is what the user needs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VerificationError(f"stage {stage!r} failed: onnxruntime cannot load its output: {first_line}") from None
    session_inputs = {i.name for i in session.get_inputs()}
    names = list(reference.outputs[0])
    missing = [name for name in names if name not in {o.name for o in session.get_outputs()}]
    if missing:
        raise VerificationError(f"stage {stage!r} failed: the model lost its output(s) {', '.join(missing)}")
    compared = reference.bound.compared_output(names)
    worst, rows = 0.0, []
    text_index = 0
    for feed, want in zip(reference.feeds, reference.outputs):
        mask = feed["attention_mask"].astype(bool)
        if text_input:
            feed = {"text": np.array(reference.texts[text_index : text_index + mask.shape[0]], dtype=object)}
        got = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in session_inputs})))
        for row in range(mask.shape[0]):
            text = reference.texts[text_index + row]
            for name in names:
                a, b = _real_tokens(got[name][row], mask[row]), _real_tokens(want[name][row], mask[row])
                diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
                if precision == "fp32" and diff > STAGE_ATOL:
                    raise VerificationError(
                        f"stage {stage!r} failed: {name} differs from the fp32 ONNX by {diff:.3g} > {STAGE_ATOL:g} "
                        f"on corpus text {text[:80]!r}"
                    )
                worst = max(worst, diff)
            rows.append((_real_tokens(got[compared][row], mask[row]), _real_tokens(want[compared][row], mask[row]), text))
        text_index += mask.shape[0]
    checked = len(reference.texts)
    if precision == "fp32":
        return StageCheck(stage, precision, checked, worst, bound=f"max_abs_diff <= {STAGE_ATOL:g}")
    return StageCheck(stage, precision, checked, worst, **reference.bound.judge(stage, rows, checked))


def _real_tokens(value: np.ndarray, mask_row: np.ndarray) -> np.ndarray:
    """A per-token output (seq, ...) restricted to the text's real tokens; a per-text output as it is."""
    if value.ndim >= 2 and value.shape[0] == mask_row.shape[0]:
        return value[mask_row]
    return value

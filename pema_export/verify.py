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
from pema_export.pooling import SENTENCE_OUTPUT, pool_torch
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


def torch_reference(model: nn.Module, pooling: Pooling | None) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    """The fine-tuned PyTorch model as a function of (input_ids, attention_mask) -> {onnx output name: array}."""

    @torch.no_grad()
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
        model.eval()
        result = model(input_ids=input_ids, attention_mask=attention_mask)
        if hasattr(result, "logits"):
            return {"logits": result.logits.numpy()}
        outputs = {"last_hidden_state": result.last_hidden_state.numpy()}
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

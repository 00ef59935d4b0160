"""Prove, on real corpus texts, that the bundle answers exactly as the fine-tuned model does. Raise on failure.

(a) tokenization fidelity: the pruned tokenizer's ids == the original tokenizer's ids mapped old -> new;
(b) output parity: onnxruntime on the exported graph vs the PyTorch model on the same ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Sequence

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
from pema_export.vocab import KeptVocab, encoded_ahead
from pema_export import words
from pema_export.words import WordSplit, post_processor_ids, word_split

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


def check_tokenization(original: Tokenizer, pruned: Tokenizer, kept: KeptVocab, texts: Iterable[str],
                       cancelled: Callable[[], bool] = lambda: False) -> FidelityReport:
    """Every text whose tokens were all kept must get exactly the original ids, renumbered.

    Streams ``texts`` in batches (memory stays one batch ahead, whatever the corpus size). Where both tokenizers
    split texts into words by the same rule (``pema_export.words``), each distinct word is compared once, and a
    text passes when all its words do; other texts are encoded whole by both, the next batch while this one is
    compared (``tokenizers`` releases the GIL), and compared as arrays. ``cancelled``: polled between batches, so a
    check running beside another step stops when that step failed."""
    id_map = kept.id_map
    split = _shared_word_split(original, pruned, id_map)
    if split is None:
        checked, dropped = _check_whole(original, pruned, id_map, texts, cancelled)
    else:
        checked, dropped = _check_by_words(original, pruned, id_map, split, texts, cancelled)
    return FidelityReport(texts_checked=checked, tokenization_mismatches=0, texts_with_dropped_tokens=dropped)


def _shared_word_split(original: Tokenizer, pruned: Tokenizer, id_map: np.ndarray) -> WordSplit | None:
    """The word rule, where both tokenizers normalize, pre-tokenize, cut out added tokens and add special ids alike
    (the ids renumbered): then a text's ids match when each of its words' ids do."""
    original_json, pruned_json = json.loads(original.to_str()), json.loads(pruned.to_str())
    same = all(original_json.get(key) == pruned_json.get(key) for key in ("normalizer", "pre_tokenizer"))
    added = lambda data: [{k: v for k, v in token.items() if k != "id"} for token in data.get("added_tokens") or []]
    specials = lambda tokenizer: sorted(post_processor_ids(tokenizer).elements())
    if not same or added(original_json) != added(pruned_json):
        return None
    if sorted(id_map[specials(original)].tolist()) != specials(pruned):
        return None  # every text would fail: encoding whole names the first one
    split = word_split(original, original_json)
    return split if split is not None and split == word_split(pruned, pruned_json) else None


def _check_by_words(original: Tokenizer, pruned: Tokenizer, id_map: np.ndarray, split: WordSplit, texts: Iterable[str],
                    cancelled: Callable[[], bool]) -> tuple[int, int]:
    """(texts checked, texts skipped for a dropped token), comparing each distinct word once."""
    known: set[str] = set()  # words compared, at most words.MAX_DISTINCT_WORDS
    with_dropped: set[str] = set()  # words of ``known`` that contain a dropped token
    checked = dropped = 0
    for batch in batched(texts, words.BATCH_TEXTS):
        if cancelled():
            break
        split_texts, split_words, whole = split.split_batch(batch)
        distinct = set(chain.from_iterable(split_words))
        new = list(distinct.difference(known))
        if len(known) + len(new) > words.MAX_DISTINCT_WORDS:  # forget, then compare all of this batch's words again
            known.clear(), with_dropped.clear()
            new = list(distinct)
        if new:
            encode = lambda tokenizer: [e.ids for e in tokenizer.encode_batch_fast(new, add_special_tokens=False)]
            has_dropped, same = _compare_rows(encode(original), encode(pruned), id_map)
            mismatched = {new[i] for i in np.flatnonzero(~same & ~has_dropped)}
            known.update(new)
            with_dropped.update(new[i] for i in np.flatnonzero(has_dropped))
        else:
            mismatched = set()
        bad_here = distinct & with_dropped
        if mismatched or bad_here:
            for text, text_words in zip(split_texts, split_words):
                if not with_dropped.isdisjoint(text_words):
                    dropped += 1
                elif not mismatched.isdisjoint(text_words):
                    _check_whole(original, pruned, id_map, [text], cancelled)  # raises, naming the text and its ids
                    raise VerificationError(f"tokenization fidelity failed on corpus text {text[:80]!r}")
                else:
                    checked += 1
        else:
            checked += len(split_texts)
        if whole:
            whole_checked, whole_dropped = _check_whole(original, pruned, id_map, whole, cancelled)
            checked, dropped = checked + whole_checked, dropped + whole_dropped
    return checked, dropped


def _check_whole(original: Tokenizer, pruned: Tokenizer, id_map: np.ndarray, texts: Iterable[str],
                 cancelled: Callable[[], bool]) -> tuple[int, int]:
    """(texts checked, texts skipped for a dropped token), encoding every text whole with both tokenizers."""
    checked = dropped = 0
    encode = lambda batch: ([e.ids for e in original.encode_batch_fast(batch)], [e.ids for e in pruned.encode_batch_fast(batch)])
    for batch, (before, after) in encoded_ahead(encode, batched(texts, 1024)):
        if cancelled():
            break
        has_dropped, same = _compare_rows(before, after, id_map)
        failed = np.flatnonzero(~same & ~has_dropped)
        if failed.size:
            row = int(failed[0])
            want = id_map[before[row]].tolist()
            raise VerificationError(
                f"tokenization fidelity failed on corpus text {batch[row][:80]!r}: "
                f"pruned ids {after[row][:12]} != original ids mapped {want[:12]}"
            )
        dropped += int(has_dropped.sum())
        checked += len(batch) - int(has_dropped.sum())
    return checked, dropped


def _compare_rows(before: list[list[int]], after: list[list[int]], id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (a text, or a word): whether the original ids hold a dropped token, and whether the pruned ids equal
    the original ids mapped old -> new."""
    width = max(max(map(len, before), default=0), max(map(len, after), default=0))
    expected, lengths = _ragged(before, width, id_map)
    got, got_lengths = _ragged(after, width)
    return (expected == -1).any(axis=1), (lengths == got_lengths) & (expected == got).all(axis=1)


def _ragged(rows: list[list[int]], width: int, id_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids as one (texts, width) array padded with -2 (never an id, nor id_map's -1 for a dropped token),
    mapped through ``id_map`` when given, and the rows' lengths."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    if id_map is not None:
        flat = id_map[flat]
    table = np.full((len(rows), width), -2, dtype=np.int64)
    table[np.arange(table.shape[1]) < lengths[:, None]] = flat
    return table, lengths


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


# Texts per onnxruntime/PyTorch run in the checks, and tokens per run: equal-length texts are stacked (no padding),
# so a batch computes each text with exactly the operations of a run on that text alone.
BATCH_TEXTS = 64
BATCH_TOKENS = 4096
# The attention mask's path: one padded batch of texts of this many different lengths, as an app that batches sends.
PADDED_TEXTS = 32


def length_groups(lengths: Sequence[int], max_texts: int = BATCH_TEXTS, max_tokens: int = BATCH_TOKENS) -> list[list[int]]:
    """Indices of texts grouped by equal token count, shortest first (ties in corpus order), at most ``max_texts``
    texts and ``max_tokens`` tokens per group: batches that need no padding."""
    groups: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        cap = max(1, min(max_texts, max_tokens // max(lengths[index], 1)))
        if groups and lengths[groups[-1][0]] == lengths[index] and len(groups[-1]) < cap:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _feed(input_ids: np.ndarray, attention_mask: np.ndarray, input_names: set[str]) -> dict[str, np.ndarray]:
    feed = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = np.zeros_like(input_ids)
    return feed


def _worst_row(got: dict, expected: dict, attention_mask: np.ndarray) -> tuple[str, np.ndarray]:
    """(output name, per-text max |diff|) of the output whose worst text differs most; padded positions excluded."""
    valid = attention_mask.astype(bool)
    worst_name, worst_diff = "", np.zeros(len(attention_mask))
    for name, want in expected.items():
        error = np.abs(got[name] - want)
        if error.ndim == 3:  # per-token states: padding positions are not outputs anyone reads
            error = np.where(valid[:, :, None], error, 0.0)
        diff = error.reshape(len(attention_mask), -1).max(axis=1)
        if not worst_name or diff.max() > worst_diff.max():
            worst_name, worst_diff = name, diff
    return worst_name, worst_diff


def check_parity(
    onnx_path: Path,
    reference: Callable[[torch.Tensor, torch.Tensor], dict],
    pruned: Tokenizer,
    texts: list[str],
    pad_id: int,
    atol: float = PARITY_ATOL,
) -> ParityReport:
    """The graph against ``reference`` (the PyTorch model) on ``texts``; fail naming the first text whose outputs
    differ by more than atol. ``pruned`` truncates as the app will (``--max-length``)."""
    return parity_and_reference(onnx_path, reference, pruned, texts, pad_id, atol=atol)[0]


def parity_and_reference(
    onnx_path: Path,
    reference: Callable[[torch.Tensor, torch.Tensor], dict],
    pruned: Tokenizer,
    texts: list[str],
    pad_id: int,
    bound: Top1Agreement | CosineCloseness | None = None,
    atol: float = PARITY_ATOL,
) -> tuple[ParityReport, OnnxReference]:
    """Output parity, and the fp32 graph's outputs that every later stage is compared with, from one session and
    one pass over ``texts``.

    Both sides run on batches of equal-length texts (``length_groups``): no padding, so each text's outputs are
    computed exactly as in a run on it alone, only many times faster than one text per run. Then one padded batch
    of texts of different lengths checks the attention mask's path, which apps that batch rely on."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    ids = [enc.ids for enc in pruned.encode_batch(texts)]
    groups = length_groups([len(row) for row in ids])
    worst = 0.0
    feeds, outputs, ordered = [], [], []

    def compare(rows: list[int], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
        nonlocal worst
        feed = _feed(input_ids.numpy(), attention_mask.numpy(), input_names)
        got = dict(zip(output_names, session.run(output_names, feed)))
        name, diff = _worst_row(got, reference(input_ids, attention_mask), feed["attention_mask"])
        if diff.max() > atol:
            row = int(diff.argmax())
            raise VerificationError(
                f"output parity failed on corpus text {texts[rows[row]][:80]!r}: {name} differs by {diff[row]:.3g} > {atol:g}"
            )
        worst = max(worst, float(diff.max()))
        return got

    for rows in groups:
        input_ids = torch.tensor([ids[i] for i in rows], dtype=torch.long)
        attention_mask = torch.ones_like(input_ids)
        got = compare(rows, input_ids, attention_mask)
        feeds.append(_feed(input_ids.numpy(), attention_mask.numpy(), input_names))
        outputs.append(got)
        ordered.extend(texts[i] for i in rows)
    mixed = _spread_lengths(groups, PADDED_TEXTS)
    if len(mixed) > 1:
        compare(mixed, *pad_batch([ids[i] for i in mixed], pad_id))
    report = ParityReport(texts_checked=len(texts), max_abs_diff=worst, outputs=tuple(output_names))
    return report, OnnxReference(texts=ordered, feeds=feeds, outputs=outputs, bound=bound)


def _spread_lengths(groups: list[list[int]], count: int) -> list[int]:
    """One text of each of up to ``count`` different lengths, spread from the shortest to the longest."""
    if len(groups) <= count:
        return [group[0] for group in groups]
    picks = np.linspace(0, len(groups) - 1, count).round().astype(int)
    return [groups[i][0] for i in sorted(set(picks.tolist()))]


# --- Post-export stages (optimize, quantize, convert): each result against the fp32 ONNX on the same corpus sample.

STAGE_ATOL = PARITY_ATOL  # a stage that keeps fp32 (fusion, ORT conversion) must answer as the fp32 ONNX does
# Number formats whose graphs mix the texts of a batch (a dynamic activation scale per tensor): checked one text per run.
ONE_TEXT_PER_RUN = ("int8",)


@dataclass(frozen=True)
class OnnxReference:
    """The fp32 ONNX model's outputs on the corpus sample, computed once and compared with every later stage, and
    the bound a reduced-precision stage is held to (the task's: tasks.Task.quantized_bound)."""

    texts: list[str]  # in the order of the batches' rows
    feeds: list[dict[str, np.ndarray]]  # one batch per entry: equal-length texts (length_groups), or padded
    outputs: list[dict[str, np.ndarray]]
    bound: Top1Agreement | CosineCloseness | None


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


def onnx_reference(fp32_path: Path, pruned: Tokenizer, texts: list[str], pad_id: int, bound: Top1Agreement | CosineCloseness) -> OnnxReference:
    """Run the fp32 ONNX model on ``texts`` (tokenized as the app will) in batches of equal-length texts (no padding).
    The export gets this from ``parity_and_reference``, in the same pass as parity."""
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    ids = [enc.ids for enc in pruned.encode_batch(texts)]
    feeds, outputs, ordered = [], [], []
    for rows in length_groups([len(row) for row in ids]):
        input_ids = np.asarray([ids[i] for i in rows], dtype=np.int64)
        feed = _feed(input_ids, np.ones_like(input_ids), input_names)
        feeds.append(feed)
        outputs.append(dict(zip(output_names, session.run(output_names, feed))))
        ordered.extend(texts[i] for i in rows)
    return OnnxReference(texts=ordered, feeds=feeds, outputs=outputs, bound=bound)


def check_stage(stage: str, candidate: Path, reference: OnnxReference, precision: str, text_input: bool = False) -> StageCheck:
    """Compare ``candidate`` (.onnx or .ort) with the fp32 ONNX; raise naming ``stage`` when it misses its bound.

    fp32 stages: every output within STAGE_ATOL. int8/fp16 stages: the reference's bound (top-1 agreement, or the
    cosine of the sentence vector or of the token states of the text's real tokens). Padded positions are never
    compared: fused attention leaves them undefined and no app reads them. ``text_input``: the candidate takes the
    texts themselves (the in-graph tokenizer, stages/string_input.py), through onnxruntime-extensions.

    An int8 model runs one text per run, as an app calls it: dynamic quantization picks one activation scale per
    tensor, so in a batch every text's answer depends on its neighbours (MiniLM on the samples: 99.6% top-1
    agreement one by one, 98.8% in padded batches of 32). Every other model runs the reference's batches of
    equal-length texts: nothing in an fp32 or fp16 graph mixes the rows of a batch, so each text gets the answer
    a run on it alone gives (tests/test_verify_batching.py checks it on real graphs).
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
    one_text_per_run = precision in ONE_TEXT_PER_RUN
    for feed, want in zip(reference.feeds, reference.outputs):
        mask = feed["attention_mask"].astype(bool)
        if text_input:
            feed = {"text": np.array(reference.texts[text_index : text_index + mask.shape[0]], dtype=object)}
        feed = {k: v for k, v in feed.items() if k in session_inputs}
        got = _run_one_by_one(session, names, feed) if one_text_per_run else dict(zip(names, session.run(names, feed)))
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


def _run_one_by_one(session: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of equal-length texts run one text per run; the outputs stacked as the batch's would be."""
    texts = len(next(iter(feed.values())))
    runs = [session.run(names, {k: v[row : row + 1] for k, v in feed.items()}) for row in range(texts)]
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def _real_tokens(value: np.ndarray, mask_row: np.ndarray) -> np.ndarray:
    """A per-token output (seq, ...) restricted to the text's real tokens; a per-text output as it is."""
    if value.ndim >= 2 and value.shape[0] == mask_row.shape[0]:
        return value[mask_row]
    return value

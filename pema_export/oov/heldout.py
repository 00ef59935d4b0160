"""Held-out figures of the shipped bundle (``--eval``): UNK and remapped rates with the shipped tokenizer, and the
task's metric (a classifier's accuracy, a token classifier's entity F1) or, for an encoder, how close its vectors
stay to the original full-vocabulary model's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pema_export.manifest import HeldOutRecord
from pema_export.tasks import SENTENCE_OUTPUT, Score, Task, rounded


@dataclass(frozen=True)
class HeldOutReport:
    texts: int
    pieces: int
    unk_rate: float | None  # share of word pieces the model receives as UNK (None: the tokenizer has no UNK)
    remapped_rate: float  # share of word pieces that run as a different (nearest kept) token
    score: Score | None  # the task's metric of the shipped model's answers
    # an encoder (no labels): its sentence vectors against the original, full-vocabulary model's on the same texts
    cosine_to_full: dict | None = None  # {"mean", "min", "p10"}
    neighbour_agreement: float | None = None  # share of texts whose nearest other held-out text is the full model's

    def as_manifest(self, file_name: str, model_name: str) -> HeldOutRecord:
        figures = rounded(self.score.figures) if self.score else {}
        return HeldOutRecord(
            file=file_name,
            model=model_name,
            texts=self.texts,
            unk_rate=None if self.unk_rate is None else round(self.unk_rate, 6),
            remapped_rate=round(self.remapped_rate, 6),
            accuracy=figures.pop("accuracy", None),
            figures=figures,
            cosine_to_full=None if self.cosine_to_full is None else {key: round(value, 6) for key, value in self.cosine_to_full.items()},
            nearest_neighbour_agreement=None if self.cosine_to_full is None else round(self.neighbour_agreement, 6),
        )


def heldout_report(model_path: Path, tokenizer, texts: list[str], labels: list | None, task: Task, *,
                   label_names: list[str] | None = None, unk_id: int | None, dropped_ids: np.ndarray | None = None,
                   full_vectors: np.ndarray | None = None, text_input: bool = False) -> HeldOutReport:
    """Run the shipped model one text at a time (as an app does) on held-out texts with the shipped tokenizer.

    ``labels`` (the task's targets, per text or per piece, over ``label_names``): the task's metric of its top
    answers. ``unk_id`` is in the shipped tokenizer's numbering;
    ``dropped_ids`` (bundles in the original numbering): a boolean mask of the original ids that run as another
    token. ``full_vectors`` (encoders): the original model's sentence vectors for ``texts``
    (``full_vocabulary_vectors``). ``text_input``: the shipped model takes the texts themselves (--tokenizer in-graph)."""
    import onnxruntime as ort

    encodings = tokenizer.encode_batch(texts)
    pieces = np.asarray([i for enc in encodings for i, special in zip(enc.ids, enc.special_tokens_mask) if not special], dtype=np.int64)
    unk = None if unk_id is None else float(np.mean(pieces == unk_id)) if len(pieces) else 0.0
    remapped = float(np.mean(dropped_ids[pieces])) if dropped_ids is not None and len(pieces) else 0.0
    if labels is None and full_vectors is None:
        return HeldOutReport(texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped, score=None)
    if text_input:
        from pema_export.string_input import session as string_session

        session = string_session(model_path)
    else:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    answers = []
    for text, encoding in zip(texts, encodings):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if text_input:
            feeds = {"text": np.array([text], dtype=object)}
        if labels is not None:
            answers.append(session.run([task.outputs[0]], feeds)[0][0].argmax(-1).tolist())  # per text, or per piece
        elif SENTENCE_OUTPUT in output_names:
            answers.append(session.run([SENTENCE_OUTPUT], feeds)[0][0])
        else:  # an encoder without sentence pooling: the mean of its token states stands for the text
            answers.append(session.run([task.outputs[0]], feeds)[0][0].mean(axis=0))
    if labels is not None:
        return HeldOutReport(texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped,
                             score=task.metric(answers, labels, label_names))
    cosines, agreement = compare_vectors(np.asarray(answers, dtype=np.float64), np.asarray(full_vectors, dtype=np.float64))
    return HeldOutReport(
        texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped, score=None,
        cosine_to_full={"mean": float(cosines.mean()), "min": float(cosines.min()), "p10": float(np.percentile(cosines, 10))},
        neighbour_agreement=agreement,
    )


def compare_vectors(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-text cosine of ``got`` to ``want``, and the share of texts whose nearest other text (by cosine) is the
    same under both: what a search feature over these texts would return first."""
    unit_got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    unit_want = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    cosines = (unit_got * unit_want).sum(axis=1)
    if len(got) < 2:
        return cosines, 1.0
    similar_got, similar_want = unit_got @ unit_got.T, unit_want @ unit_want.T
    np.fill_diagonal(similar_got, -np.inf)
    np.fill_diagonal(similar_want, -np.inf)
    return cosines, float(np.mean(similar_got.argmax(axis=1) == similar_want.argmax(axis=1)))


def full_vocabulary_vectors(source, texts: list[str], max_length: int) -> np.ndarray:
    """The original model's sentence vectors (every row, pretrained, fp32, its own tokenizer): the ceiling a pruned
    encoder is held to on text the corpus never had. Pooled as the bundle pools; mean of token states otherwise."""
    import torch
    from transformers import AutoModel

    from pema_export.pooling import pool_torch
    from pema_export.vocab import open_tokenizer

    model = AutoModel.from_pretrained(source.path)
    model.eval()
    tokenizer = open_tokenizer(source.tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    vectors = []
    with torch.no_grad():
        for encoding in tokenizer.encode_batch(texts):
            ids = torch.tensor([encoding.ids])
            mask = torch.ones_like(ids)
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if source.pooling is not None:
                vectors.append(pool_torch(source.pooling, states, mask)[0].numpy())
            else:
                vectors.append(states[0].mean(dim=0).numpy())
    return np.asarray(vectors)

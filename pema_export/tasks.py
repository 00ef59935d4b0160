"""The tasks pema-export exports, one entry each: how the model loads, what it answers, how its stages are judged.

A task is chosen once, by ``resolve_task``: ``--task`` when given; else the task whose labels the corpus carries;
else the head the checkpoint already has; else the model as an encoder. Model loading (pema.py), training
(train.py), the export (export.py), verification (verify.py), the size prediction (scan.py), the OOV policies and
the manifest read the entry, never the task's name. A new task is one entry here (with its targets and metric)
plus a corpus reader for its labels (corpus.py); token classification's targets and entity reading live in
entities.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pema_export import entities
from pema_export.errors import VerificationError

# The output a sentence-transformers folder's graph gains (pooling.py appends it); the encoder bound compares it.
SENTENCE_OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class Score:
    """A held-out measurement: ``value``, the figure each epoch reports; ``figures``, what the manifest records,
    by name (the metric's name first)."""

    value: float
    figures: dict


def rounded(figures):
    """Figures as the manifest writes them: floats to 6 places, inside dicts too."""
    if isinstance(figures, float):
        return round(figures, 6)
    return {key: rounded(value) for key, value in figures.items()} if isinstance(figures, dict) else figures


@dataclass(frozen=True)
class Accuracy:
    """Share of texts whose predicted label is the true one."""

    name: str = "accuracy"

    def __call__(self, predicted: Sequence, labels: Sequence, label_names: Sequence[str] | None = None) -> Score:
        value = sum(p == y for p, y in zip(predicted, labels)) / len(labels)
        return Score(value, {self.name: value})

    def describe(self, figures: dict) -> str:
        return f"accuracy {figures[self.name]:.4f}"

    def breakdown(self, figures: dict) -> str | None:
        return None


accuracy = Accuracy()


@dataclass(frozen=True)
class EntityF1:
    """Entity-level precision, recall and F1, micro-averaged over exact span matches (type and both boundaries),
    and per type: seqeval's figures with ``mode="strict", scheme=IOB2``. The units compared are the pieces whose
    true label is not ignored (the first piece of each word); ``predicted`` and ``labels`` hold a class index per
    piece of each text."""

    name: str = "entity_f1"

    def __call__(self, predicted: Sequence, labels: Sequence, label_names: Sequence[str]) -> Score:
        counts: dict[str, list[int]] = {}  # type -> [correct, predicted, true]
        for predicted_row, true_row in zip(predicted, labels):
            units = [i for i, label in enumerate(true_row) if label != entities.IGNORED]
            want = entities.spans([label_names[true_row[i]] for i in units])
            got = entities.spans([label_names[predicted_row[i]] for i in units])
            for found, column in ((want & got, 0), (got, 1), (want, 2)):
                for _, _, label in found:
                    counts.setdefault(label, [0, 0, 0])[column] += 1
        total = [sum(column) for column in zip(*counts.values())] or [0, 0, 0]
        precision, recall, f1 = _prf(*total)
        per_label = {}
        for label in sorted(counts):
            p, r, f = _prf(*counts[label])
            per_label[label] = {"precision": p, "recall": r, "f1": f, "support": counts[label][2]}
        return Score(f1, {self.name: f1, "entity_precision": precision, "entity_recall": recall, "entity_per_label": per_label})

    def describe(self, figures: dict) -> str:
        return (f"entity F1 {figures[self.name]:.4f} (precision {figures['entity_precision']:.4f}, recall "
                f"{figures['entity_recall']:.4f})")

    def breakdown(self, figures: dict) -> str | None:
        per_label = figures.get("entity_per_label") or {}
        return "F1 per label: " + ", ".join(f"{label} {entry['f1']:.3f}" for label, entry in per_label.items()) if per_label else None


def _prf(correct: int, predicted: int, true: int) -> tuple[float, float, float]:
    """Precision, recall, F1; 0 where a denominator is 0 (seqeval's zero_division default)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)


def text_label(example, encoding, label_ids: dict[str, int]) -> int:
    """The training target of a text labelled as a whole: its label's index (``encoding`` is not needed)."""
    return label_ids[example.label]


def token_labels(example, encoding, label_ids: dict[str, int]) -> list[int]:
    """The training targets of a sentence with entities: per piece of ``encoding``, its unit's tag index on the
    unit's first piece, -100 (ignored) elsewhere (entities.unit_tags)."""
    tags = entities.unit_tags(example.text, example.words, example.entities, encoding, example.origin or "text")
    return [entities.IGNORED if tag is None else label_ids[tag] for tag in tags]


@dataclass(frozen=True)
class Top1Agreement:
    """A reduced-precision model keeps the fp32 model's top answer: per text when the output is per text, per real
    (non-padding) token when it is per token (a masked LM's or a token classifier's logits)."""

    min_agreement: float = 0.99
    output: str = "logits"

    def judge(self, stage: str, rows: list[tuple[np.ndarray, np.ndarray, str]], checked: int) -> dict:
        """``rows``: (candidate, fp32, text) per text, real tokens only. The manifest's figures, or raise."""
        agree = units = 0
        first_miss = None
        for got, want, text in rows:
            same = got.argmax(-1) == want.argmax(-1)
            agree, units = agree + int(np.sum(same)), units + int(np.size(same))
            if first_miss is None and not np.all(same):
                first_miss = text
        agreement = agree / max(units, 1)
        if agreement < self.min_agreement:
            raise VerificationError(
                f"stage {stage!r} failed: top-1 agreement with fp32 is {agreement:.2%} ({agree} of {units}) < "
                f"{self.min_agreement:.0%} on {checked} corpus texts; first disagreement on {first_miss[:80]!r} "
                "(train longer for larger margins, or ship fp32 with --quantize none)"
            )
        return {"top1_agreement": agreement, "bound": f"top1_agreement >= {self.min_agreement:g}"}

    def compared_output(self, names: Sequence[str]) -> str:
        return self.output


@dataclass(frozen=True)
class CosineCloseness:
    """A reduced-precision encoder keeps the direction of the fp32 vectors: a mean over the corpus texts and a floor
    for the worst text. A per-text 0.99 was too strict for what int8 can do: all-MiniLM on the sample search texts
    measured mean 0.9942, 1st percentile 0.9901, worst 0.9895, and keeping every FFN projection in fp32 (+10.6 MB)
    only lifted the worst to 0.9927 (README, "Targets")."""

    mean_min: float = 0.99
    floor: float = 0.98

    def judge(self, stage: str, rows: list[tuple[np.ndarray, np.ndarray, str]], checked: int) -> dict:
        cosines, worst_text, lowest = [], None, 1.0
        for got, want, text in rows:
            a, b = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
            cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
            if not cosines or cosine < lowest:
                lowest, worst_text = cosine, text
            cosines.append(cosine)
        lowest, mean = min(cosines), float(np.mean(cosines))
        if mean < self.mean_min:
            raise VerificationError(
                f"stage {stage!r} failed: mean cosine similarity to fp32 is {mean:.4f} < {self.mean_min:g} on {checked} "
                "corpus texts (ship fp32 with --quantize none)"
            )
        if lowest < self.floor:
            raise VerificationError(
                f"stage {stage!r} failed: cosine similarity to fp32 is {lowest:.4f} < {self.floor:g} on corpus text {worst_text[:80]!r}"
            )
        return {"min_cosine": lowest, "mean_cosine": mean, "bound": f"mean_cosine >= {self.mean_min:g} and min_cosine >= {self.floor:g}"}

    def compared_output(self, names: Sequence[str]) -> str:
        """The sentence vector when the model pools, otherwise its token states (real tokens only)."""
        return SENTENCE_OUTPUT if SENTENCE_OUTPUT in names else names[0]


@dataclass(frozen=True)
class Task:
    name: str  # as optimum exports it, as --task and the manifest's model.task name it
    auto_class: str  # the transformers Auto class that builds it
    outputs: tuple[str, ...]  # what the graph and the PyTorch reference answer (sentence pooling adds SENTENCE_OUTPUT)
    quantized_bound: Top1Agreement | CosineCloseness  # int8/fp16 stages against fp32 (fp32 stages: verify.STAGE_ATOL)
    # the labels a corpus carries for it (corpus.TEXT_LABEL: one per text; corpus.TOKEN_LABELS: entities); None:
    # never trained
    label_kind: str | None = None
    # (corpus.Example, its tokenizers.Encoding, {label: index}) -> what the model learns to answer for it
    targets: Callable[[object, object, dict[str, int]], object] | None = None
    # (predictions, targets, label names) -> Score: the held-out figure while training and on --eval
    metric: Accuracy | EntityF1 | None = None
    label_names: Callable[[set[str]], list[str]] = sorted  # the head's classes from the labels the corpus carries
    # a label on every piece: a text over --max-length is refused rather than truncated (it would lose labels)
    labels_per_token: bool = False
    # training defaults when --epochs/--lr are not given (None: the loop's, train.DEFAULT_EPOCHS/DEFAULT_LR)
    epochs: int | None = None
    lr: float | None = None
    checkpoint_heads: tuple[str, ...] = ()  # architecture suffixes: an unlabelled checkpoint with this head is this task
    requestable: bool = False  # offered by --task
    pools: bool = False  # a sentence-transformers folder's pooling is appended to the graph
    closeness_to_full: bool = False  # --eval compares its vectors with the original full-vocabulary model's
    vocabulary_logits: bool = False  # logits over the vocabulary through the output projection tied to the input embedding
    head: str = "head"  # what the model adds to the encoder, in messages
    # The size prediction (scan.py) builds this architecture; the encoder of an exported encoder has no pooler.
    size_class: str = "AutoModel"
    exports_pooler: bool = False
    # --oov auto's word dropout to UNK for a corpus that trains this task under the compressed tail, as a regulariser
    # (oov/tail.py): 0.1 for token classification, where benchmarks/token_classification.py measured +1.6-2.7
    # points of entity F1 over 3 seeds; none for text classification, whose five-set measurement had none
    tail_word_dropout: float = 0.0

    def trains_on(self, label_kind: str | None) -> bool:
        """Whether a corpus with labels of ``label_kind`` (None: unlabelled) fine-tunes this task."""
        return label_kind is not None and label_kind == self.label_kind


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("text-classification", "AutoModelForSequenceClassification", outputs=("logits",), quantized_bound=Top1Agreement(),
             label_kind="text", targets=text_label, metric=accuracy, checkpoint_heads=("ForSequenceClassification",),
             head="classifier head", size_class="AutoModelForSequenceClassification", exports_pooler=True),
        Task("feature-extraction", "AutoModel", outputs=("last_hidden_state",), quantized_bound=CosineCloseness(), pools=True,
             closeness_to_full=True, head="encoder"),
        # Predicted as its encoder (size_class AutoModel): the masked-LM head's transform is not counted, as the scan
        # has always predicted a fill-mask bundle.
        Task("fill-mask", "AutoModelForMaskedLM", outputs=("logits",), quantized_bound=Top1Agreement(), requestable=True,
             vocabulary_logits=True, head="masked-LM head"),
        Task("token-classification", "AutoModelForTokenClassification", outputs=("logits",), quantized_bound=Top1Agreement(),
             label_kind="tokens", targets=token_labels, metric=EntityF1(), label_names=entities.label_names,
             labels_per_token=True, checkpoint_heads=("ForTokenClassification",), head="token-classification head",
             size_class="AutoModelForTokenClassification",
             # measured on the sample slot corpus (MiniLM, seed 0): 5 epochs at 1e-4 under-fit (held-out entity F1
             # 0.690, 0.821 on its own training sentences); 10 at 3e-4: 0.770 held out (README, Token classification)
             epochs=10, lr=3e-4, tail_word_dropout=0.1),
    )
}
UNLABELLED_DEFAULT = TASKS["feature-extraction"]  # a model with no head and no labels is exported as an encoder


def requestable_tasks() -> list[str]:
    return [name for name, task in TASKS.items() if task.requestable]


def resolve_task(requested: str | None, label_kind: str | None, architectures: Sequence[str] | None) -> Task:
    """The one decision of what is exported: ``--task``; else the task of the corpus's labels; else the
    checkpoint's head; else an encoder."""
    if requested is not None:
        return TASKS[requested]
    for task in TASKS.values():
        if label_kind is not None and task.label_kind == label_kind:
            return task
    for task in TASKS.values():
        if any(a.endswith(head) for a in architectures or [] for head in task.checkpoint_heads):
            return task
    return UNLABELLED_DEFAULT


def transformers_class(name: str):
    """A transformers Auto class by name (``Task.auto_class``, ``Task.size_class``), imported when needed."""
    import transformers

    return getattr(transformers, name)

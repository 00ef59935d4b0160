"""Fine-tune a model whose embedding already holds only the kept rows, on its task's labels."""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from pema_export.devices import Placement, Replicas, resolve_placement
from pema_export.entities import IGNORED
from pema_export.errors import CorpusError, DeviceError, PemaError
from pema_export.tasks import Score, accuracy


# The loop's defaults; a task may set its own (tasks.Task.epochs, .lr). Why 5 at 1e-4: see cli/export.py.
DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-4


@dataclass(frozen=True)
class TrainOptions:
    epochs: int | None = None  # None: the task's default, else DEFAULT_EPOCHS
    lr: float | None = None  # None: the task's default, else DEFAULT_LR
    batch_size: int = 16  # texts per optimizer step over all processes of a launch (devices.Replicas)
    weight_decay: float = 0.01  # never applied to embeddings, biases or LayerNorm (see README: PEMA and decay)
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (devices.resolve_placement)
    precision: str | None = "fp32"  # fp32, bf16 or fp16 autocast over fp32 weights; None: what accelerate launch says
    progress: bool = False
    # share of corpus words replaced by what an unseen word becomes (docs/oov.md); None: what the --oov policy
    # brings (0.1 under --oov auto for a labelled corpus, else 0)
    oov_dropout: float | None = None

    def resolved(self, epochs: int | None = None, lr: float | None = None) -> "TrainOptions":
        """These options with epochs and lr given: as set, else ``epochs``/``lr`` (a task's defaults), else the
        loop's."""
        return replace(self, epochs=self.epochs or epochs or DEFAULT_EPOCHS, lr=self.lr or lr or DEFAULT_LR)


@dataclass(frozen=True)
class EncodedSet:
    """Token ids (already in the pruned numbering) and labels: a class index per text, or per piece (-100 where the
    loss ignores it)."""

    input_ids: list[list[int]]
    labels: list[int] | list[list[int]]
    word_spans: list[list[tuple[int, int]]] | None = None  # [start, end) token positions of each word, for --oov-dropout

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainReport:
    epochs: int
    train_size: int
    eval_size: int
    eval_accuracy_per_epoch: list[float] = field(default_factory=list)  # the task metric's value (accuracy, entity F1)
    eval_figures: dict = field(default_factory=dict)  # the metric's figures after the last epoch (tasks.Score.figures)
    seconds: float = 0.0
    placement: Placement | None = None  # where it trained: device, why, precision, processes

    @property
    def eval_accuracy(self) -> float | None:
        return self.eval_accuracy_per_epoch[-1] if self.eval_accuracy_per_epoch else None


def labels_seen_once(labels: Sequence[str]) -> list[str]:
    """Labels with a single text: they are trained on but cannot be held out, so accuracy never covers them."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return sorted(label for label, n in counts.items() if n == 1)


def split_held_out(labels: Sequence[str], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified (train, eval) index lists. A label seen once stays in training only (it cannot be held out)."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train, held_out = [], []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        n_eval = min(len(indices) - 1, round(len(indices) * eval_fraction))
        held_out += indices[:n_eval]
        train += indices[n_eval:]
    if not held_out:
        raise CorpusError(
            f"the held-out split would be empty ({len(labels)} texts, --eval-split {eval_fraction}); "
            "add texts, raise --eval-split, or pass --eval FILE"
        )
    return sorted(train), sorted(held_out)


def word_spans(word_ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """[start, end) positions of each word in an encoding's ``word_ids`` (special tokens, None, belong to none)."""
    spans: list[tuple[int, int]] = []
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        if spans and word_ids[spans[-1][0]] == word and spans[-1][1] == position:
            spans[-1] = (spans[-1][0], position + 1)
        else:
            spans.append((position, position + 1))
    return spans


def drop_words(ids: list[int], spans: list[tuple[int, int]], rate: float, substitute, rng: random.Random,
               labels: list[int] | None = None) -> list[int] | tuple[list[int], list[int]]:
    """``ids`` with each word replaced, with probability ``rate``, by ``substitute(its ids)``.

    With per-piece ``labels``, (ids, labels): a replaced word's label rides on the substitute's first piece. A word
    whose pieces carry more than one label (an entity boundary inside it) is kept: one substitute cannot carry
    both."""
    out, out_labels, position = [], [], 0
    for start, end in spans:
        if rng.random() < rate:
            carried = [label for label in labels[start:end] if label != IGNORED] if labels is not None else []
            if len(carried) > 1:
                continue
            replacement = list(substitute(ids[start:end]))
            out += ids[position:start] + replacement
            if labels is not None:
                out_labels += labels[position:start] + (carried or [IGNORED]) + [IGNORED] * (len(replacement) - 1)
            position = end
    if labels is None:
        return out + ids[position:]
    return out + ids[position:], out_labels + labels[position:]


def fine_tune(model: nn.Module, train_set: EncodedSet, eval_set: EncodedSet, pad_id: int, options: TrainOptions,
              dropout=None, metric: Callable[[Sequence, Sequence], Score] = accuracy) -> TrainReport:
    """AdamW with linear warm-up/decay and gradient clipping; the task's held-out ``metric`` after each epoch
    (``metric(predicted, labels)``, its label names bound).

    Trains on ``options.device`` in ``options.precision`` (autocast over fp32 weights; fp16 with loss scaling), in
    one process or, under accelerate launch / torchrun, data-parallel: every process draws the same global batches
    and runs its share of each. ``model`` is trained in place and left on that device (``devices.to_cpu_fp32``
    brings it back; the pipeline does so right after this returns).

    ``dropout`` (``oov.OovDropout``): each epoch, words of the training texts are replaced with probability
    ``dropout.rate`` by ``dropout.substitute(ids)``, drawn from ``options.seed``: fresh words each epoch."""
    if dropout is not None and train_set.word_spans is None:
        raise ValueError("oov dropout needs the training set's word spans")
    options = options.resolved()
    placement = resolve_placement(options.device, options.precision)
    replicas = Replicas(placement)
    replicas.check_same("training texts, labels or model", _fingerprint(model, train_set, eval_set))
    word_rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    try:
        trained = replicas.wrap(model)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        raise DeviceError(f"{placement.device} ran out of memory taking the model itself ({size / 1e6:,.1f} MB of weights) "
                          "before any training step: use a device with more memory, or --device cpu; nothing was written") from exc
    optimizer = torch.optim.AdamW(_parameter_groups(model, options.weight_decay), lr=options.lr)
    scaler = placement.grad_scaler()
    steps_per_epoch = math.ceil(len(train_set) / options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * options.warmup_ratio), total_steps)
    order_rng = torch.Generator().manual_seed(options.seed)
    report = TrainReport(epochs=options.epochs, train_size=len(train_set), eval_size=len(eval_set), placement=placement)
    started = time.perf_counter()
    try:
        for epoch in range(options.epochs):
            trained.train()
            order = torch.randperm(len(train_set), generator=order_rng).tolist()
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{options.epochs}", disable=not options.progress, leave=False)
            for start in range(0, len(order), options.batch_size):
                batch = [order[i] for i in range(start, min(start + options.batch_size, len(order)))]
                texts = [train_set.input_ids[i] for i in batch]
                targets = [train_set.labels[i] for i in batch]
                if dropout is not None:  # drawn for the whole global batch in every process, as one process draws it
                    dropped = [drop_words(ids, train_set.word_spans[i], dropout.rate, dropout.substitute, word_rng,
                                          labels=target if isinstance(target, list) else None)
                               for ids, i, target in zip(texts, batch, targets)]
                    if isinstance(targets[0], list):
                        texts, targets = [ids for ids, _ in dropped], [labels for _, labels in dropped]
                    else:
                        texts = dropped
                input_ids, attention_mask = pad_batch(texts, pad_id)
                labels = label_batch(targets, input_ids.shape[1])
                loss = _share_loss(trained, replicas, input_ids, attention_mask, labels)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
            bar.close()
            # fp32, without autocast: the figure is the one the exported fp32 model will give
            score = evaluate(model, eval_set, pad_id, options.batch_size, placement.device, metric)
            report.eval_accuracy_per_epoch.append(score.value)
            report.eval_figures = score.figures
        replicas.finish()
    except RuntimeError as exc:
        if _is_out_of_memory(exc):  # the batch, not a bug
            raise _out_of_memory(placement, options, train_set) from exc
        if replicas.processes.count == 1:
            raise
        raise replicas.failed(exc) from exc
    report.seconds = time.perf_counter() - started
    model.eval()
    return report


def _is_out_of_memory(exc: RuntimeError) -> bool:
    """CUDA's torch.OutOfMemoryError, or the CPU allocator's plain RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(exc)


def _out_of_memory(placement: Placement, options: TrainOptions, train_set: EncodedSet) -> DeviceError:
    """Training did not fit the device's memory, as one line that says what to lower."""
    longest = max(map(len, train_set.input_ids), default=0)
    where = f"process {placement.processes.rank} of {placement.processes.count}, " if placement.processes.count > 1 else ""
    cheaper = "" if placement.precision != "fp32" or placement.device.type == "cpu" else ", or train in --precision bf16 (or fp16)"
    return DeviceError(f"{where}{placement.device} ran out of memory training batches of {options.batch_size} texts of up to "
                       f"{longest} tokens in {placement.precision}: lower --batch-size or --max-length{cheaper}; nothing "
                       "was written")


def _share_loss(trained: nn.Module, replicas: Replicas, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """This process's loss on its rows of the global batch, weighted so that the processes' averaged gradients are
    the batch's; in one process, the model's loss on the whole batch as it is."""
    placement, device = replicas.placement, replicas.placement.device
    if replicas.processes.count == 1:
        with placement.autocast():
            return trained(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), labels=labels.to(device)).loss
    rows = replicas.rows(len(labels))
    counted = labels != -100  # the loss terms: every text, or (per-token labels) every labelled token
    share_items, batch_items = int(counted[rows].sum()), int(counted.sum())
    if share_items == 0:
        # an empty share still runs a step (every process must join the gradient exchange), weighted 0
        rows, weight = slice(0, 1), 0.0
    else:
        weight = replicas.weight(share_items, batch_items)
    with placement.autocast():
        loss = trained(input_ids=input_ids[rows].to(device), attention_mask=attention_mask[rows].to(device),
                       labels=labels[rows].to(device)).loss
    return loss * weight


def _fingerprint(model: nn.Module, train_set: EncodedSet, eval_set: EncodedSet) -> str:
    digest = hashlib.sha256(repr((train_set.input_ids, train_set.labels, eval_set.input_ids, eval_set.labels)).encode())
    digest.update(repr([(name, tuple(p.shape)) for name, p in model.named_parameters()]).encode())
    return digest.hexdigest()


@torch.no_grad()
def evaluate(model: nn.Module, eval_set: EncodedSet, pad_id: int, batch_size: int, device=torch.device("cpu"),
             metric: Callable[[Sequence, Sequence], Score] = accuracy) -> Score:
    """The task's ``metric`` of the model's top answers (per text, or per piece) on ``eval_set``."""
    model.eval()
    predicted = []
    for start in range(0, len(eval_set), batch_size):
        input_ids, attention_mask = pad_batch(eval_set.input_ids[start : start + batch_size], pad_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        predicted += logits.argmax(-1).cpu().tolist()
    return metric(predicted, eval_set.labels) if len(eval_set) else Score(float("nan"), {})


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as int64 tensors."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def label_batch(labels: Sequence[int] | Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """A batch's targets: a class index per text, or per piece right-padded with -100 to ``length``."""
    if not labels or not isinstance(labels[0], (list, tuple)):
        return torch.tensor(list(labels))
    batch = torch.full((len(labels), length), IGNORED, dtype=torch.long)
    for row, targets in enumerate(labels):
        batch[row, : len(targets)] = torch.as_tensor(targets, dtype=torch.long)
    return batch


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Weight decay on the embedding would shrink rows the batch never used; leaving it off keeps PEMA
    # exactly equal to full-vocabulary fine-tuning on in-vocabulary input.
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in embedding_ids or parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

"""Read an app's corpus as a stream of (text, label) examples.

Formats, chosen by file extension:
- ``.txt``: one text per line; a line ``label<TAB>text`` is labelled. Blank lines are skipped.
- ``.tsv`` / ``.csv``: a header row with a ``text`` column and an optional ``label`` column.
- ``.jsonl``: one JSON object per line with ``"text"`` and an optional ``"label"``.

Files are read lazily, line by line, so a corpus larger than memory can be counted.
"""

from __future__ import annotations

import csv
import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from pema_export.errors import CorpusError

@dataclass(frozen=True)
class Example:
    text: str
    label: str | None = None


def check_corpus_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Fail early, before any work, for a corpus path that is missing, empty or of an unknown format."""
    if not paths:
        raise CorpusError("no corpus given: pass --corpus FILE (.txt, .tsv, .csv or .jsonl)")
    checked = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise CorpusError(f"corpus file not found: {path}")
        if path.suffix.lower() not in READERS:
            raise CorpusError(
                f"corpus {path}: unknown format {path.suffix or '(no extension)'}; use one of {', '.join(READERS)}"
            )
        if path.stat().st_size == 0:
            raise CorpusError(f"corpus file is empty: {path}")
        checked.append(path)
    return checked


def read_corpus(paths: Sequence[str | Path]) -> Iterator[Example]:
    """Yield every example of every corpus file, in order. Raises CorpusError naming file and line."""
    for path in check_corpus_paths(paths):
        yield from READERS[path.suffix.lower()](path)


def iter_texts(paths: Sequence[str | Path]) -> Iterator[str]:
    for example in read_corpus(paths):
        yield example.text


def load_examples(paths: Sequence[str | Path]) -> list[Example]:
    """The whole corpus in memory, checked to be non-empty and either fully labelled or fully unlabelled."""
    examples = list(read_corpus(paths))
    if not examples:
        raise CorpusError(f"corpus has no texts after parsing: {', '.join(str(p) for p in paths)}")
    labelled = sum(e.label is not None for e in examples)
    if 0 < labelled < len(examples):
        first = next(e for e in examples if e.label is None)
        raise CorpusError(
            f"corpus is partly labelled ({labelled} of {len(examples)} texts have a label); "
            f"first unlabelled text: {first.text[:60]!r}"
        )
    return examples


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without line ending), decoding strictly so bad bytes are named."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"corpus {path} line {number} is not UTF-8 (byte {exc.start})") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            yield number, line.rstrip("\r\n")


class _LabelKinds:
    """Text formats hold every label as text: integers mixed with words are their form of mixed label types."""

    def __init__(self, path: Path):
        self.path = path
        self.first: tuple[str, str] | None = None

    def check(self, label: str, line: int) -> None:
        kind = "an integer" if label.lstrip("-").isdigit() else "not an integer"
        if self.first is None:
            self.first = (kind, label)
        elif kind != self.first[0]:
            raise CorpusError(
                f"corpus {self.path} line {line}: label {label!r} is {kind}, the first label {self.first[1]!r} is "
                f"{self.first[0]} (mixed label types)"
            )


def _read_txt(path: Path) -> Iterator[Example]:
    kinds = _LabelKinds(path)
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        if "\t" in line:
            label, text = line.split("\t", 1)
            label, text = label.strip(), text.strip()
            if label and text:
                kinds.check(label, number)
                yield Example(text, label)
                continue
        yield Example(line.strip())


def _read_table(path: Path, delimiter: str) -> Iterator[Example]:
    lines = _decoded_lines(path)
    reader = csv.reader((line for _, line in lines), delimiter=delimiter)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise CorpusError(f"corpus {path} has no header row") from None
    if "text" not in header:
        raise CorpusError(f"corpus {path} has no 'text' column (columns: {', '.join(header)})")
    text_col = header.index("text")
    label_col = header.index("label") if "label" in header else None
    kinds = _LabelKinds(path)
    for row in _csv_rows(reader, path):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CorpusError(f"corpus {path} line {reader.line_num}: {len(row)} columns, the header has {len(header)}")
        text = row[text_col].strip()
        if not text:
            continue
        label = row[label_col].strip() if label_col is not None else None
        if label:
            kinds.check(label, reader.line_num)
        yield Example(text, label or None)


def _csv_rows(reader, path: Path) -> Iterator[list[str]]:
    """The csv module's own errors (a field over its 128 KiB limit, a stray quote) name the file and line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CorpusError(f"corpus {path} line {reader.line_num}: {exc}") from None


def _read_jsonl(path: Path) -> Iterator[Example]:
    label_type = None
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"corpus {path} line {number} is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise CorpusError(f"corpus {path} line {number} is not a corpus record: JSON nested too deeply") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f'corpus {path} line {number}: expected an object with a string "text"')
        for value in (record["text"], record.get("label")):
            if isinstance(value, str) and not _is_unicode(value):
                raise CorpusError(f"corpus {path} line {number}: an unpaired surrogate escape (\\ud800-\\udfff) is not text")
        text = record["text"].strip()
        if not text:
            continue
        label = record.get("label")
        if label is not None:
            if isinstance(label, (dict, list, float)):
                raise CorpusError(f"corpus {path} line {number}: a label must be a string or an integer, got {label!r}")
            if label_type is None:
                label_type = type(label)
            elif type(label) is not label_type:
                raise CorpusError(
                    f"corpus {path} line {number}: label {label!r} is a {type(label).__name__}, "
                    f"earlier labels are {label_type.__name__}s (mixed label types)"
                )
            label = str(label)
        yield Example(text, label)


def _is_unicode(text: str) -> bool:
    """JSON's \\uXXXX escapes can spell half a surrogate pair, which no tokenizer (nor UTF-8) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# file suffix -> reader: a new corpus format is one reader and one row
READERS: dict[str, Callable[[Path], Iterator[Example]]] = {
    ".txt": _read_txt,
    ".tsv": functools.partial(_read_table, delimiter="\t"),
    ".csv": functools.partial(_read_table, delimiter=","),
    ".jsonl": _read_jsonl,
}


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class CorpusSummary:
    """Watches a stream of examples go by: counts texts and labels and keeps a seeded reservoir sample of texts."""

    def __init__(self, sample_size: int, seed: int):
        self.sample_size = sample_size
        self.texts = 0
        self.labelled = 0
        self.labels: set[str] = set()
        self.sample: list[tuple[int, str]] = []
        self._rng = random.Random(seed)

    def observe(self, examples: Iterable[Example]) -> Iterator[str]:
        for example in examples:
            if example.label is not None:
                self.labelled += 1
                self.labels.add(example.label)
            if len(self.sample) < self.sample_size:
                self.sample.append((self.texts, example.text))
            else:
                slot = self._rng.randrange(self.texts + 1)
                if slot < self.sample_size:
                    self.sample[slot] = (self.texts, example.text)
            self.texts += 1
            yield example.text

    @property
    def num_labels(self) -> int | None:
        """The number of classes when every text is labelled (a classifier to fine-tune), else None."""
        return len(self.labels) if self.labels and self.labelled == self.texts else None

    @property
    def label_kind(self) -> str | None:
        """The labels the corpus carries for a task (tasks.Task.label_kind): "text", one per text, when every text
        has one; None otherwise."""
        return "text" if self.num_labels else None

    @property
    def sample_texts(self) -> list[str]:
        """The sampled texts in corpus order (all texts when the corpus is no larger than the sample)."""
        return [text for _, text in sorted(self.sample)]

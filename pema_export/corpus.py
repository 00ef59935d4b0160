"""Read an app's corpus as a stream of examples: a text, and its label or its entities.

Formats, chosen by file extension:
- ``.txt``: one text per line; a line ``label<TAB>text`` is labelled. Blank lines are skipped. A ``.txt`` whose
  first non-blank line is ``token<TAB>tag`` with an IOB2-looking tag (``O``, or a letter, a dash and a type:
  ``B-DATE``) is CoNLL-style instead, as ``.conll`` (a text labelled as a whole is a sentence, never a lone tag).
- ``.conll``: one token per line, ``token<TAB>tag`` (or space-separated columns, the tag last), a blank line
  between sentences; ``-DOCSTART-`` lines are skipped.
- ``.tsv`` / ``.csv``: a header row with a ``text`` column and an optional ``label`` column.
- ``.jsonl``: one JSON object per line: ``"text"`` with an optional ``"label"``; or ``"tokens"`` and ``"tags"``
  (lists of the same length); or ``"text"`` and ``"entities"``, a list of ``{"start", "end", "label"}``
  character spans (Unicode code points, as Python indexes a str; ``end`` exclusive; bare types: DATE).

Tags are IOB2 and checked (entities.py). Files are read lazily, line by line, so a corpus larger than memory can
be counted.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from pema_export.entities import Entity, check_entities, entities_from_tags
from pema_export.errors import CorpusError

# tasks.Task.label_kind of the labels an example carries
TEXT_LABEL = "text"  # one label for the whole text
TOKEN_LABELS = "tokens"  # entities: a tag per word


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None = None
    entities: tuple[Entity, ...] | None = None  # labelled entities (an empty tuple: a sentence without any)
    words: tuple[tuple[int, int], ...] | None = None  # the corpus's words as character ranges, when it gave words
    origin: str | None = field(default=None, compare=False)  # "corpus FILE line N", for errors found later

    @property
    def label_kind(self) -> str | None:
        if self.label is not None:
            return TEXT_LABEL
        return TOKEN_LABELS if self.entities is not None else None

    @property
    def label_values(self) -> tuple[str, ...]:
        """The labels it carries: its label, or the types of its entities."""
        if self.label is not None:
            return (self.label,)
        return tuple(entity.label for entity in self.entities or ())


def check_corpus_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Fail early, before any work, for a corpus path that is missing, empty or of an unknown format."""
    if not paths:
        raise CorpusError(f"no corpus given: pass --corpus FILE ({', '.join(READERS)})")
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
    """The whole corpus in memory, checked to be non-empty and either fully labelled, with one kind of label, or
    fully unlabelled."""
    examples = list(read_corpus(paths))
    if not examples:
        raise CorpusError(f"corpus has no texts after parsing: {', '.join(str(p) for p in paths)}")
    _check_one_label_kind(examples)
    labelled = sum(e.label_kind is not None for e in examples)
    if 0 < labelled < len(examples):
        first = next(e for e in examples if e.label_kind is None)
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
    if _looks_tagged(path):
        yield from _read_conll(path)
        return
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


# A CoNLL line's tag: O, or a one-letter prefix, a dash and a type (B-DATE; E-/S-/L-/U- too, so that another
# scheme is named by the tag check instead of the file being read as labelled texts).
_TAG = re.compile(r"O|[A-Za-z]-\S+")


def _looks_tagged(path: Path) -> bool:
    """A .txt is CoNLL-style when its first non-blank line is ``token<TAB>tag`` with a tag-shaped second column."""
    for _, line in _decoded_lines(path):
        if line.strip():
            columns = line.split("\t")
            return len(columns) == 2 and bool(columns[0].strip()) and bool(_TAG.fullmatch(columns[1].strip()))
    return False


def _read_conll(path: Path) -> Iterator[Example]:
    """Sentences of ``token<TAB>tag`` lines (space-separated columns too, the tag last) between blank lines."""
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    for number, line in _decoded_lines(path):
        if not line.strip():
            if words:
                yield _tagged_sentence(path, words, tags, lines)
                words, tags, lines = [], [], []
            continue
        columns = [column.strip() for column in (line.split("\t") if "\t" in line else line.split())]
        if columns[0] == "-DOCSTART-":
            continue
        if len(columns) < 2 or not columns[0] or not columns[-1]:
            raise CorpusError(f"corpus {path} line {number}: expected token<TAB>tag, got {line.strip()[:60]!r}")
        words.append(columns[0])
        tags.append(columns[-1])
        lines.append(number)
    if words:
        yield _tagged_sentence(path, words, tags, lines)


def _tagged_sentence(path: Path, words: list[str], tags: list[str], lines: list[int]) -> Example:
    text, ranges, entities = entities_from_tags(words, tags, lambda i: f"corpus {path} line {lines[i]}")
    return Example(text, entities=entities, words=ranges, origin=f"corpus {path} line {lines[0]}")


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
        where = f"corpus {path} line {number}"
        if not _is_unicode(record):
            raise CorpusError(f"{where}: an unpaired surrogate escape (\\ud800-\\udfff) is not text")
        if isinstance(record, dict) and ("tokens" in record or "tags" in record):
            yield _jsonl_tagged(record, where)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(f'{where}: expected an object with a string "text", or "tokens" and "tags"')
        if "entities" in record:
            example = _jsonl_spans(record, where)
            if example is not None:
                yield example
            continue
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


def _is_unicode(value) -> bool:
    """JSON's \\uXXXX escapes can spell half a surrogate pair, which no tokenizer (nor UTF-8) can take: every string
    of a record (its text, label, tokens, tags) must encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_is_unicode(key) and _is_unicode(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_is_unicode(item) for item in value)
    return True


def _jsonl_tagged(record: dict, where: str) -> Example:
    """``{"tokens": [...], "tags": [...]}``: tagged words."""
    tokens, tags = record.get("tokens"), record.get("tags")
    for name, value in (("tokens", tokens), ("tags", tags)):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise CorpusError(f'{where}: "{name}" must be a list of strings')
    if "label" in record:
        raise CorpusError(f'{where}: a text carries a "label" or tagged tokens, not both')
    if len(tokens) != len(tags):
        raise CorpusError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
    if not tokens:
        raise CorpusError(f"{where}: no tokens")
    text, ranges, entities = entities_from_tags(tokens, tags, lambda i: f"{where}, token {i + 1} ({tokens[i]!r})")
    return Example(text, entities=entities, words=ranges, origin=where)


def _jsonl_spans(record: dict, where: str) -> Example | None:
    """``{"text": ..., "entities": [{"start", "end", "label"}, ...]}``: character spans (None for a blank text
    without entities, skipped like any blank text)."""
    text, raw = record["text"], record["entities"]
    if "label" in record:
        raise CorpusError(f'{where}: a text carries a "label" or "entities", not both')
    if not isinstance(raw, list):
        raise CorpusError(f'{where}: "entities" must be a list of {{"start", "end", "label"}} objects')
    entities = []
    for i, span in enumerate(raw, start=1):
        if (not isinstance(span, dict) or not all(type(span.get(key)) is int for key in ("start", "end"))
                or not isinstance(span.get("label"), str) or not span["label"].strip()):
            raise CorpusError(f'{where}: entity {i} must be {{"start": int, "end": int, "label": "TYPE"}}, got {span!r}')
        if re.match(r"[BIESLU]-", span["label"]):
            raise CorpusError(f"{where}: entity {i} has label {span['label']!r}; a span's label is a bare type "
                              f"({span['label'][2:]!r}), its tags are derived")
        entities.append(Entity(span["start"], span["end"], span["label"].strip()))
    if not text.strip() and not entities:
        return None
    return Example(text, entities=check_entities(text, entities, where), origin=where)


# file suffix -> reader: a new corpus format is one reader and one row
READERS: dict[str, Callable[[Path], Iterator[Example]]] = {
    ".txt": _read_txt,  # CoNLL-style when its first line is token<TAB>tag (_looks_tagged)
    ".conll": _read_conll,
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
        self.labels: set[str] = set()  # labels of whole texts, or entity types
        self.sample: list[tuple[int, str]] = []
        self._rng = random.Random(seed)
        self._first_labelled: Example | None = None

    def observe(self, examples: Iterable[Example]) -> Iterator[str]:
        for example in examples:
            if example.label_kind is not None:
                if self._first_labelled is None:
                    self._first_labelled = example
                elif example.label_kind != self._first_labelled.label_kind:
                    raise _mixed_kinds(self._first_labelled, example)
                self.labelled += 1
                self.labels.update(example.label_values)
            if len(self.sample) < self.sample_size:
                self.sample.append((self.texts, example.text))
            else:
                slot = self._rng.randrange(self.texts + 1)
                if slot < self.sample_size:
                    self.sample[slot] = (self.texts, example.text)
            self.texts += 1
            yield example.text

    @property
    def label_kind(self) -> str | None:
        """The labels the corpus carries for a task (tasks.Task.label_kind) when every text has them: TEXT_LABEL,
        one per text, or TOKEN_LABELS, entities; None otherwise."""
        if self._first_labelled is None or self.labelled != self.texts:
            return None
        return self._first_labelled.label_kind

    @property
    def sample_texts(self) -> list[str]:
        """The sampled texts in corpus order (all texts when the corpus is no larger than the sample)."""
        return [text for _, text in sorted(self.sample)]


def _check_one_label_kind(examples: Sequence[Example]) -> None:
    first = next((e for e in examples if e.label_kind is not None), None)
    other = next((e for e in examples if e.label_kind not in (None, first.label_kind)), None) if first else None
    if other is not None:
        raise _mixed_kinds(first, other)


def _mixed_kinds(first: Example, other: Example) -> CorpusError:
    def described(example: Example) -> str:
        if example.label_kind == TEXT_LABEL:
            return f"a label per text ({example.text[:40]!r})"
        return f"tagged tokens ({example.origin or repr(example.text[:40])})"

    return CorpusError(f"the corpus mixes {described(first)} with {described(other)}; one export trains one task")

"""Entities in a text: IOB2 tags checked, character spans checked, labels aligned to sub-word pieces, and entities
read back from tags (strict IOB2, as seqeval's ``mode="strict", scheme=IOB2`` reads them).

A labelled sentence is held as its text and its entities as character spans (``Entity``), whatever the corpus
format: tagged words become spans over the words joined by single spaces. Training labels come from the encoding
of that text by the model's own tokenizer, through the offsets it reports: a *unit* is a word (the corpus's words
when it gave them, else the tokenizer's), cut where an entity starts or ends; its first piece carries the unit's
tag (``B-TYPE`` for the first unit of an entity, ``I-TYPE`` for the rest, ``O`` outside), its other pieces -100,
which the loss ignores. The text is never re-split here.

Why the words are joined and encoded as one text rather than with ``is_pretokenized=True``: for byte-level BPE
(RoBERTa's tokenizer.json has ``add_prefix_space: false``), pre-tokenized words encode without their leading
``Ġ`` ("is" instead of "Ġis"), so the model would train on ids the app's tokenizer never produces for the
sentence; encoding the sentence gives the ids the app sends, and for WordPiece and Unigram the same ids as
``is_pretokenized`` would.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

from pema_export.errors import CorpusError

OUTSIDE = "O"
IGNORED = -100  # the label a piece gets when it is not the first of its unit: torch's cross-entropy skips it
SCHEME_PREFIXES = ("B", "I")  # IOB2; other schemes' prefixes are named in the error
OTHER_SCHEMES = {"E": "BIOES/IOBES", "S": "BIOES/IOBES", "L": "BILOU", "U": "BILOU"}


@dataclass(frozen=True, order=True)
class Entity:
    """Characters ``[start, end)`` of a text are one ``label`` (a bare type: DATE, not B-DATE)."""

    start: int
    end: int
    label: str


def split_tag(tag: str, where: str) -> tuple[str, str | None]:
    """``"B-DATE"`` -> ("B", "DATE"); ``"O"`` -> ("O", None). Any other scheme is refused, named."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, dash, label = tag.partition("-")
    if dash and prefix in SCHEME_PREFIXES and label:
        return prefix, label
    scheme = OTHER_SCHEMES.get(prefix) if dash else None
    hint = f" (a {scheme} tag)" if scheme else ""
    raise CorpusError(f"{where}: tag {tag!r}{hint} is not in the IOB2 label scheme; use O, B-TYPE and I-TYPE")


def entities_from_tags(words: Sequence[str], tags: Sequence[str], where: Callable[[int], str]) -> tuple[str, tuple, tuple]:
    """(text, word character ranges, entities) of tagged words joined by single spaces; ``where(i)`` names word i
    (its file and line) in errors. The tags must be valid IOB2: an entity starts with B-TYPE and continues with
    I-TYPE of the same type."""
    ranges, entities, position = [], [], 0
    open_entity: list | None = None  # [start, end, label] of the entity the previous word was in
    previous = OUTSIDE
    for i, (word, tag) in enumerate(zip(words, tags)):
        if not word.strip():
            raise CorpusError(f"{where(i)}: an empty token")
        prefix, label = split_tag(tag, where(i))
        start, end = position, position + len(word)
        ranges.append((start, end))
        position = end + 1
        if prefix == "I" and (open_entity is None or open_entity[2] != label):
            raise CorpusError(f"{where(i)}: tag {tag!r} follows {previous!r}, which is not valid BIO (IOB2): an entity "
                              f"starts with B-{label}")
        if prefix == "I":
            open_entity[1] = end
        else:
            if open_entity is not None:
                entities.append(Entity(*open_entity))
            open_entity = [start, end, label] if prefix == "B" else None
        previous = tag
    if open_entity is not None:
        entities.append(Entity(*open_entity))
    return " ".join(words), tuple(ranges), tuple(entities)


def check_entities(text: str, entities: Sequence[Entity], where: str) -> tuple[Entity, ...]:
    """Character spans sorted, each inside its text and overlapping no other; raise naming the span."""
    ordered = sorted(entities)
    for i, entity in enumerate(ordered):
        name = f"entity {entity.label!r} at {entity.start}-{entity.end}"
        if not 0 <= entity.start < entity.end <= len(text):
            raise CorpusError(f"{where}: {name} is outside its text ({len(text)} characters; a span needs "
                              "0 <= start < end <= that)")
        if not text[entity.start:entity.end].strip():
            raise CorpusError(f"{where}: {name} covers only white space")
        if i and entity.start < ordered[i - 1].end:
            other = ordered[i - 1]
            raise CorpusError(f"{where}: {name} overlaps entity {other.label!r} at {other.start}-{other.end}")
    return tuple(ordered)


def label_names(types: set[str]) -> list[str]:
    """The classes a token-classification head predicts: O, then B- and I- of every entity type, sorted."""
    return [OUTSIDE] + [f"{prefix}-{label}" for label in sorted(types) for prefix in SCHEME_PREFIXES]


def unit_tags(text: str, words: Sequence[tuple[int, int]] | None, entities: Sequence[Entity], encoding,
              where: str = "text") -> list[str | None]:
    """Per piece of ``encoding`` (a tokenizers.Encoding of ``text``): the tag of the unit it starts, or None
    (special tokens, the unit's later pieces, pieces of white space only). ``words``: the corpus's word ranges
    (None: the tokenizer's words, ``encoding.word_ids``). An entity boundary inside a piece is refused: no piece
    could carry its label."""
    starts = [entity.start for entity in entities]
    word_starts = [start for start, _ in words] if words is not None else None
    tags: list[str | None] = []
    previous_unit, started = None, set()
    for position, (word, (start, end)) in enumerate(zip(encoding.word_ids, encoding.offsets)):
        start, end = _trimmed(text, start, end)
        if word is None or start >= end:
            tags.append(None)
            continue
        index = bisect.bisect_right(starts, start) - 1  # the last entity starting at or before the piece
        inside = index >= 0 and start < entities[index].end
        following = index + 1 < len(entities) and entities[index + 1].start < end
        if (inside and end > entities[index].end) or following:
            cut = entities[index + 1] if following else entities[index]
            raise CorpusError(
                f"{where}: entity {cut.label!r} at {cut.start}-{cut.end} ({text[cut.start:cut.end]!r}) begins or ends "
                f"inside the piece {encoding.tokens[position]!r} of this model's tokenizer, so no piece can carry its "
                "label; put the boundary between words"
            )
        entity = index if inside else None
        unit = (word if word_starts is None else bisect.bisect_right(word_starts, start), entity)
        if unit == previous_unit:
            tags.append(None)
            continue
        previous_unit = unit
        if entity is None:
            tags.append(OUTSIDE)
        else:
            tags.append(("I-" if entity in started else "B-") + entities[entity].label)
            started.add(entity)
    return tags


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """A piece's character range without surrounding white space (byte-level BPE's Ġ and Metaspace's ▁ pieces
    cover the space before a word)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """The entities of a tag sequence as (first unit, end unit, type), read as strict IOB2 (seqeval's
    ``mode="strict", scheme=IOB2``): an entity is a B-TYPE and the I-TYPE units that follow it; an I-TYPE that
    follows no B-TYPE or I-TYPE of its type belongs to no entity (the lenient conlleval reading would start one)."""
    found, open_start, open_label = set(), None, None
    for position, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, label = tag.partition("-")
        if open_start is not None and prefix == "I" and label == open_label:
            continue
        if open_start is not None:
            found.add((open_start, position, open_label))
        open_start, open_label = (position, label) if prefix == "B" else (None, None)
    return found

"""Tokenize a corpus once per distinct word instead of once per text: what lets a million-text scan take seconds.

A text's ids are its post-processor's special ids around the concatenation of its words' ids whenever no token can
span an ASCII space. Whether that holds is read here from the tokenizer's own JSON, by rule, conservatively; a text
outside its rule is encoded whole, exactly as before:

- ``whitespace``: pre-tokenizers that split on whitespace and drop it (BertPreTokenizer, Whitespace, WhitespaceSplit,
  alone or in a Sequence with Punctuation or Digits, which only split) behind character-wise normalizers
  (BertNormalizer, Lowercase, StripAccents, NFC/NFD/NFKC/NFKD, Strip): every text, split on " ".
- ``byte-level``: GPT-2's pattern (ByteLevel with its regex) behind no normalizer or NFC, NFD, Lowercase (none makes
  a space). A space begins a piece and never ends one, so a text whose only whitespace is single spaces between
  words is its first word, then " " + each later word.
- ``metaspace``: Metaspace that splits (SentencePiece: XLM-R, T5, ALBERT), for texts with single spaces between
  words, behind Precompiled, NF*, Lowercase, StripAccents, Strip, and Replace of a space-free string or of runs of
  two or more spaces. These normalize one grapheme or character at a time, so each word must be its own
  graphemes (no combining mark after the space, no prepended mark before it), normalize to something non-empty
  with no whitespace, and not start with "▁": checked once per distinct word (``WordSplit.local_word``); printable
  ASCII words are checked once for all, on every printable character and pair.

A text that contains an added token's content is always encoded whole (added tokens are cut out before
normalization and may take the spaces beside them), as are all texts of a tokenizer with padding, truncation, BPE
dropout or a pre-tokenizer outside these rules. ``tests/test_words.py`` checks the rule on every family, word by
word against whole-text encoding, on generated texts full of the cases above.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from typing import Callable, Iterable

import numpy as np
from tokenizers import Tokenizer

from pema_export.corpus import batched

MAX_DISTINCT_WORDS = 500_000  # words held before their counts are flushed: bounds memory on any corpus
BATCH_TEXTS = 8192

WHITESPACE_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
LOCAL_SPLITTERS = WHITESPACE_SPLITTERS | {"Punctuation", "Digits"}  # split inside a word, never join across a space
CHARWISE_NORMALIZERS = {"BertNormalizer", "Lowercase", "StripAccents", "NFC", "NFD", "NFKC", "NFKD", "Strip"}
SPACELESS_NORMALIZERS = {"NFC", "NFD", "Lowercase"}  # never turn a non-space into a space
ASCII_NORMALIZERS = {"Precompiled", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip"}
PLAIN = re.compile(r"\S+(?: \S+)*")  # words separated by single spaces, nothing else that is whitespace
PRINTABLE_ASCII = [chr(code) for code in range(0x21, 0x7F)]


@dataclass(frozen=True)
class WordSplit:
    """How one tokenizer's texts split into words it encodes independently (see the module's rules)."""

    rule: str  # "whitespace", "byte-level" or "metaspace"
    plain_only: bool  # only texts whose whitespace is single spaces between words
    ascii_only: bool  # only texts of printable ASCII
    later_prefix: str  # prepended to every word after the first ("" or " ")
    added: re.Pattern | None  # texts where this matches are encoded whole
    # metaspace: word -> whether it normalizes on its own as inside a text (texts of printable ASCII need no check)
    local_word: Callable[[str], bool] | None = field(default=None, compare=False)

    def words(self, text: str) -> list[str] | None:
        """``text``'s words as the tokenizer encodes them, or None where the text must be encoded whole."""
        if self.added is not None and self.added.search(text):
            return None
        printable_ascii = text.isascii() and text.isprintable()
        if self.ascii_only and not printable_ascii:
            return None
        if self.plain_only and not PLAIN.fullmatch(text):
            return None
        words = text.split(" ")
        if self.local_word is not None and not printable_ascii and not all(map(self.local_word, words)):
            return None
        if self.later_prefix:
            words[1:] = [self.later_prefix + word for word in words[1:]]
        return words

    def split_batch(self, texts: list[str]) -> tuple[list[str], list[list[str]], list[str]]:
        """(the texts that split, their words, the texts to encode whole)."""
        if self.rule == "whitespace" and not self.ascii_only and (self.added is None or not self.added.search("\n".join(texts))):
            return texts, [text.split(" ") for text in texts], []  # one search for the whole batch: every text splits
        split_texts, split_words, whole = [], [], []
        for text in texts:
            words = self.words(text)
            if words is None:
                whole.append(text)
            else:
                split_texts.append(text)
                split_words.append(words)
        return split_texts, split_words, whole


def word_split(tokenizer: Tokenizer, tokenizer_json: dict | None = None) -> WordSplit | None:
    """The tokenizer's word rule, or None where its texts must be encoded whole."""
    if tokenizer.padding is not None or tokenizer.truncation is not None:
        return None
    data = tokenizer_json if tokenizer_json is not None else json.loads(tokenizer.to_str())
    if data["model"].get("dropout"):
        return None
    rule = _rule(data.get("pre_tokenizer"), data.get("normalizer"))
    if rule is None:
        return None
    name, later_prefix = rule
    if name == "metaspace" and not _keeps_ascii(tokenizer):
        return None
    local_word = _local_word(tokenizer, data["pre_tokenizer"].get("replacement", "\u2581")) if name == "metaspace" else None
    added = data.get("added_tokens") or []
    pattern = None
    if added:
        contents = sorted({token["content"] for token in added}, key=len, reverse=True)
        # a normalized added token is matched after normalization: case-insensitively covers lowercasing, and the
        # whitespace rule keeps such texts to printable ASCII (below) so nothing else can make one
        flags = re.IGNORECASE if any(token.get("normalized") for token in added) else 0
        pattern = re.compile("|".join(map(re.escape, contents)), flags)
    ascii_only = name == "whitespace" and any(token.get("normalized") for token in added)
    return WordSplit(rule=name, plain_only=name != "whitespace", ascii_only=ascii_only, later_prefix=later_prefix,
                     added=pattern, local_word=local_word)


def _rule(pre_tokenizer: dict | None, normalizer: dict | None) -> tuple[str, str] | None:
    if pre_tokenizer is None:
        return None
    kind = pre_tokenizer["type"]
    members = pre_tokenizer.get("pretokenizers", []) if kind == "Sequence" else [pre_tokenizer]
    types = [member["type"] for member in members]
    splits_on_space = any(t in WHITESPACE_SPLITTERS for t in types)
    if splits_on_space and all(t in LOCAL_SPLITTERS for t in types):
        return ("whitespace", "") if _normalizers_in(normalizer, CHARWISE_NORMALIZERS) else None
    if kind == "ByteLevel" and pre_tokenizer.get("use_regex", True) and _normalizers_in(normalizer, SPACELESS_NORMALIZERS):
        return "byte-level", " "
    if kind == "Metaspace" and pre_tokenizer.get("split", True) and _normalizers_in(normalizer, ASCII_NORMALIZERS, replace_ok=True):
        scheme = pre_tokenizer.get("prepend_scheme", "always" if pre_tokenizer.get("add_prefix_space", True) else "never")
        return "metaspace", " " if scheme == "never" else ""
    return None


def _normalizers_in(normalizer: dict | None, allowed: set[str], replace_ok: bool = False) -> bool:
    if normalizer is None:
        return True
    members = normalizer.get("normalizers", []) if normalizer["type"] == "Sequence" else [normalizer]
    for member in members:
        if member["type"] == "Replace" and replace_ok:
            if not _replace_is_local(member):
                return False
        elif member["type"] not in allowed:
            return False
    return True


def _replace_is_local(member: dict) -> bool:
    """Replace never touches a single space between two words and never makes whitespace in a word: a space-free
    string by a space-free one, or runs of two or more spaces (which plain texts do not have) by anything."""
    pattern, content = member.get("pattern", {}), member.get("content", "")
    if pattern.get("Regex") == " {2,}":
        return True
    text = pattern.get("String")
    return bool(text) and not any(ch.isspace() for ch in text + content)


def _keeps_ascii(tokenizer: Tokenizer) -> bool:
    """The normalizer leaves printable ASCII words without whitespace and word by word: checked on every printable
    character and every ordered pair (the charsmap of a Precompiled normalizer is data, not a rule)."""
    normalizer = tokenizer.normalizer
    if normalizer is None:
        return True
    words = PRINTABLE_ASCII + [a + b for a in PRINTABLE_ASCII for b in PRINTABLE_ASCII]
    normalized = [normalizer.normalize_str(word) for word in words]
    if any(not word or any(ch.isspace() for ch in word) for word in normalized):
        return False
    return normalizer.normalize_str(" ".join(words)) == " ".join(normalized)


def _local_word(tokenizer: Tokenizer, replacement: str) -> Callable[[str], bool]:
    """word -> whether Metaspace sees it alone as it sees it in a text: its graphemes end where it ends (Precompiled
    maps a grapheme or a character at a time), and its normalization is non-empty, free of whitespace and does not
    start with the replacement character (each would add or move a piece boundary). Cached, bounded."""
    import regex  # grapheme clusters (\X), as the Precompiled normalizer walks them

    normalizer, cache = tokenizer.normalizer, {}
    graphemes = regex.compile(r"\X")

    def local(word: str) -> bool:
        known = cache.get(word)
        if known is None:
            if len(cache) >= MAX_DISTINCT_WORDS:
                cache.clear()
            normalized = normalizer.normalize_str(word) if normalizer is not None else word
            known = (bool(normalized) and not normalized.startswith(replacement) and not any(ch.isspace() for ch in normalized)
                     and len(graphemes.findall(f" {word} ")) == len(graphemes.findall(word)) + 2)
            cache[word] = known
        return known

    return local


def post_processor_ids(tokenizer: Tokenizer) -> Counter:
    """The ids the post-processor adds around one text (e.g. [CLS] and [SEP]), as counts."""
    probe = "a"
    return Counter(tokenizer.encode(probe, add_special_tokens=True).ids) - Counter(tokenizer.encode(probe, add_special_tokens=False).ids)


def encode_words(tokenizer: Tokenizer, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(every word's ids concatenated, each word's id count)."""
    rows = [encoding.ids for encoding in tokenizer.encode_batch_fast(words, add_special_tokens=False)]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())), lengths


def count_by_words(tokenizer: Tokenizer, split: WordSplit, texts: Iterable[str], vocab_size: int,
                   whole_counts: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, int]:
    """(occurrences of each id, texts seen): each distinct word encoded once per flush, its ids counted as many
    times as it occurs; ``whole_counts(texts)`` counts the texts that must be encoded whole (special ids included)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    words: Counter = Counter()
    split_texts = 0

    def flush() -> None:
        if words:
            ids, lengths = encode_words(tokenizer, list(words))
            occurrences = np.fromiter(words.values(), dtype=np.int64, count=len(words))
            counts[:] += np.bincount(ids, weights=np.repeat(occurrences, lengths), minlength=vocab_size)[:vocab_size].astype(np.int64)
            words.clear()

    texts_seen = 0
    for batch in batched(texts, BATCH_TEXTS):
        _, split_words, whole = split.split_batch(batch)
        words.update(chain.from_iterable(split_words))
        split_texts += len(split_words)
        if whole:
            counts += whole_counts(whole)
        texts_seen += len(batch)
        if len(words) > MAX_DISTINCT_WORDS:
            flush()
    flush()
    for special_id, per_text in post_processor_ids(tokenizer).items():
        counts[special_id] += per_text * split_texts
    return counts, texts_seen


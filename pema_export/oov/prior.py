"""A word-frequency prior for ``--prior-words N``: the tokens of a language's N most frequent words (``wordfreq``'s
offline lists), tokenized with the model's own tokenizer, each with its share of general text."""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pema_export.errors import CorpusError

# Languages whose share of the corpus texts is below this are not given a prior (one stray French greeting in an
# English corpus should not buy thousands of French rows).
MIN_LANGUAGE_SHARE = 0.2
# Words per language compared with the corpus to detect its language(s): enough to cover everyday text.
DETECT_WORDS = 5000
_WORDS = re.compile(r"[^\W\d_]+")


@functools.lru_cache(maxsize=None)
def _wordfreq():
    try:
        import wordfreq
    except ImportError:  # a dependency; only a broken install lacks it
        raise CorpusError("--prior-words needs the wordfreq package (pip install wordfreq)") from None
    return wordfreq


def available_languages() -> list[str]:
    return sorted(_wordfreq().available_languages(wordlist="best"))


@functools.lru_cache(maxsize=None)
def _top_words(language: str, n_words: int) -> tuple[str, ...]:
    words = tuple(_wordfreq().top_n_list(language, n_words, wordlist="best"))
    _release_wordfreq_lists()
    return words


def _release_wordfreq_lists() -> None:
    """wordfreq keeps every language's whole list once read (42 languages: 844 MB): only our slice is kept, so
    detecting the language of a corpus holds one list at a time."""
    for cached in (_wordfreq().get_frequency_list, _wordfreq().get_frequency_dict):
        if hasattr(cached, "cache_clear"):
            cached.cache_clear()


def detect_languages(texts: Iterable[str]) -> dict[str, float]:
    """Languages of the corpus -> share of its texts: each text votes for the language whose common words cover
    most of its words (ties: the language that covers more of the whole corpus); languages with at least
    MIN_LANGUAGE_SHARE of the votes are returned, most voted first."""
    words_by_text = [_WORDS.findall(text.lower()) for text in texts]
    words_by_text = [words for words in words_by_text if words]
    if not words_by_text:
        raise CorpusError("cannot detect the corpus language: it has no words; pass --prior-lang")
    common = {language: frozenset(_top_words(language, DETECT_WORDS)) for language in available_languages()}
    corpus_cover = {language: sum(w in vocab for words in words_by_text for w in words) for language, vocab in common.items()}
    votes: Counter[str] = Counter()
    for words in words_by_text:
        cover = {language: sum(w in vocab for w in words) for language, vocab in common.items()}
        best = max(cover.values())
        if best:
            votes[max((lang for lang, c in cover.items() if c == best), key=lambda lang: (corpus_cover[lang], lang))] += 1
    total = sum(votes.values())
    shares = {lang: n / total for lang, n in sorted(votes.items(), key=lambda item: (-item[1], item[0])) if total and n / total >= MIN_LANGUAGE_SHARE}
    if not shares:
        raise CorpusError("cannot detect the corpus language from wordfreq's word lists; pass --prior-lang")
    return shares


def check_languages(languages: Iterable[str]) -> list[str]:
    known = set(available_languages())
    languages = list(languages)
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise CorpusError(f"--prior-lang {','.join(unknown)}: no word list (available: {', '.join(sorted(known))})")
    return languages


@dataclass(frozen=True)
class PriorWords:
    """The tokens of the N most frequent words of some languages, and each token's share of their text."""

    languages: tuple[str, ...]
    words: int  # per language
    token_share: np.ndarray  # per original id; sums to 1 over the tokens of the listed words

    @property
    def ids(self) -> set[int]:
        return {int(i) for i in np.flatnonzero(self.token_share)}

    def as_manifest(self, detected: dict[str, float] | None) -> dict:
        entry = {"languages": list(self.languages), "words_per_language": self.words, "tokens": len(self.ids)}
        entry["detected"] = {lang: round(share, 4) for lang, share in detected.items()} if detected else None
        return entry


def prior_words(tokenizer, languages: list[str], n_words: int, vocab_size: int) -> PriorWords:
    """Tokenize each listed word as it appears in running text (alone and after a space, which byte-level BPE and
    SentencePiece spell differently) and credit its frequency to each of its tokens."""
    if n_words < 1:
        raise CorpusError("--prior-words must be at least 1")
    share = np.zeros(vocab_size, dtype=np.float64)
    for language in languages:
        words = list(_top_words(language, n_words))
        frequencies = np.array([_wordfreq().word_frequency(w, language, wordlist="best") for w in words])
        _release_wordfreq_lists()
        for form in (words, [" " + w for w in words]):
            for frequency, encoding in zip(frequencies, tokenizer.encode_batch(form, add_special_tokens=False)):
                ids = np.unique(np.asarray(encoding.ids, dtype=np.int64))
                share[ids[ids < vocab_size]] += frequency
    if share.sum() > 0:
        share /= share.sum()
    return PriorWords(languages=tuple(languages), words=n_words, token_share=share)

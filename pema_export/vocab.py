"""Count which vocabulary ids a corpus uses and choose the ids to keep.

Kept ids = ids the corpus uses (at least ``min_count`` times) ∪ special and added tokens ∪ ids from a keep file
∪ what the OOV policy and the tokenizer family need, closed under BPE's merges, optionally capped at
``max_vocab``. They stay in their original relative order, so new id ``i`` is the ``i``-th kept original id.

What the OOV policy keeps and why: ``pema_export.oov``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from tokenizers import Tokenizer

from pema_export.corpus import batched
from pema_export.errors import CorpusError, TokenizerError
from pema_export.words import count_by_words, word_split

T = TypeVar("T")

# config.json fields that hold token ids; each must survive pruning and be renumbered.
CONFIG_ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "cls_token_id",
    "unk_token_id",
    "mask_token_id",
    "decoder_start_token_id",
)


def open_tokenizer(tokenizer_json: str | Path | dict) -> Tokenizer:
    """A tokenizer that encodes exactly the text's tokens: no baked-in padding or truncation."""
    try:
        if isinstance(tokenizer_json, dict):
            tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
        else:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:
        raise TokenizerError(f"cannot load tokenizer {tokenizer_json if not isinstance(tokenizer_json, dict) else ''}: {exc}") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@dataclass(frozen=True)
class TokenCounts:
    counts: np.ndarray  # occurrences per original id
    texts: int

    @property
    def tokens(self) -> int:
        return int(self.counts.sum())

    @property
    def used_ids(self) -> int:
        return int(np.count_nonzero(self.counts))


def count_tokens(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = 1024) -> TokenCounts:
    """Tokenize a stream of texts (special tokens included) and count each id.

    Where the tokenizer's rule allows (``pema_export.words``), each distinct word is encoded once and counted as
    often as it occurs: the same counts as encoding every text, several times faster. Other texts are encoded whole,
    in batches of ``batch_size``."""
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    split = word_split(tokenizer)
    if split is not None:
        counts, texts_seen = count_by_words(tokenizer, split, texts, vocab_size,
                                            lambda whole: _count_whole(tokenizer, whole, vocab_size, batch_size)[0])
    else:
        counts, texts_seen = _count_whole(tokenizer, texts, vocab_size, batch_size)
    if texts_seen == 0:
        raise CorpusError("corpus has no texts after parsing")
    return TokenCounts(counts=counts, texts=texts_seen)


def _count_whole(tokenizer: Tokenizer, texts: Iterable[str], vocab_size: int, batch_size: int) -> tuple[np.ndarray, int]:
    """Every text encoded whole, in batches: (occurrences of each id, texts seen)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    texts_seen = 0
    # offsets are not needed: encode_batch_fast gives the same ids without computing them
    encode = lambda batch: [e.ids for e in tokenizer.encode_batch_fast(batch, add_special_tokens=True)]
    for batch, rows in encoded_ahead(encode, batched(texts, batch_size)):
        ids = np.fromiter(chain.from_iterable(rows), dtype=np.int64)
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
        texts_seen += len(batch)
    return counts, texts_seen


def encoded_ahead(encode: Callable[[list], T], batches: Iterable[list]) -> Iterator[tuple[list, T]]:
    """(batch, encode(batch)) for each batch, in order, with the next batch read and encoding in a helper thread
    while the caller works on this one: ``tokenizers`` releases the GIL, so reading, encoding and counting overlap."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pema-encode") as pool:
        pending = None
        for batch in batches:
            future = pool.submit(encode, batch)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (batch, future)
        if pending is not None:
            yield pending[0], pending[1].result()


@dataclass(frozen=True)
class KeptVocab:
    """The ids kept, in original order; ``id_map[old] = new`` or -1 where the row was dropped."""

    kept_ids: np.ndarray
    original_size: int
    unk_id: int | None  # original id of the unknown token, if the tokenizer has one

    @property
    def size(self) -> int:
        return len(self.kept_ids)

    @property
    def id_map(self) -> np.ndarray:
        id_map = np.full(self.original_size, -1, dtype=np.int64)
        id_map[self.kept_ids] = np.arange(len(self.kept_ids), dtype=np.int64)
        return id_map

    def new_id(self, old_id: int) -> int:
        position = int(np.searchsorted(self.kept_ids, old_id))
        if position == len(self.kept_ids) or self.kept_ids[position] != old_id:
            raise KeyError(old_id)
        return position


def special_token_ids(tokenizer_json: dict, config: dict) -> set[int]:
    """Ids that must survive whatever the corpus says: added/special tokens, the UNK piece, config.json's ids."""
    ids = {int(token["id"]) for token in tokenizer_json.get("added_tokens", [])}
    unk_id = unk_token_id(tokenizer_json)
    if unk_id is not None:
        ids.add(unk_id)
    for field in CONFIG_ID_FIELDS:
        value = config.get(field)
        if isinstance(value, int) and value >= 0:
            ids.add(value)
    return ids


def unk_token_id(tokenizer_json: dict) -> int | None:
    model = tokenizer_json["model"]
    if model.get("type") == "Unigram":
        return model.get("unk_id")
    unk = model.get("unk_token")
    if unk is None:
        return None
    vocab = model.get("vocab", {})
    if isinstance(vocab, dict) and unk in vocab:
        return int(vocab[unk])
    return next((int(t["id"]) for t in tokenizer_json.get("added_tokens", []) if t["content"] == unk), None)


def read_keep_tokens(path: str | Path, tokenizer: Tokenizer) -> set[int]:
    """Ids named by a keep file: each line is a vocabulary token (kept as is) or a text (all its tokens kept)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"--keep-tokens file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CorpusError(f"--keep-tokens file {path} is not UTF-8") from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    ids: set[int] = set()
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#!"):
            continue
        if entry in vocab:
            ids.add(vocab[entry])
        else:
            ids.update(tokenizer.encode(entry, add_special_tokens=False).ids)
    return ids


def choose_kept_ids(
    counts: TokenCounts,
    special_ids: Iterable[int],
    unk_id: int | None,
    keep_ids: Iterable[int] = (),
    min_count: int = 1,
    original_size: int | None = None,
    *,
    policy_ids: Iterable[int] = (),
    closure: Callable[[Iterable[int]], set[int]] = set,
    max_vocab: int | None = None,
    prior_share: np.ndarray | None = None,
) -> KeptVocab:
    """Kept = closure(used at least ``min_count`` times ∪ specials ∪ keep_ids ∪ policy_ids ∪ prior tokens), sorted
    by original id.

    ``original_size`` is the number of embedding rows, which may exceed the tokenizer's vocabulary.
    ``policy_ids`` come from the OOV policy (``oov.OovPolicy.policy_ids``); ``closure`` from ``tokenizers.token_closure``.
    ``prior_share`` (per original id, from ``oov.prior.prior_words``) adds the tokens of general-language words.
    With ``max_vocab``, specials, keep_ids and policy_ids are kept first, then candidates by expected benefit,
    each with its closure, while they fit: corpus tokens first (dropping one breaks exactness on corpus texts),
    ranked by their expected frequency in the app's text, count + corpus_tokens * prior_share (the corpus and
    the prior weighted equally); then prior-only tokens by prior share. Ties: lower id first.
    """
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    original_size = max(original_size or 0, len(counts.counts))
    in_range = lambda ids: {int(i) for i in ids if 0 <= int(i) < original_size}  # noqa: E731
    must_keep = closure(in_range(special_ids) | in_range(keep_ids) | in_range(policy_ids))
    used = np.flatnonzero(counts.counts >= min_count)
    prior = np.zeros(original_size)
    if prior_share is not None:
        shared = min(len(prior_share), original_size)
        prior[:shared] = np.asarray(prior_share, dtype=np.float64)[:shared]
    prior_only = np.setdiff1d(np.flatnonzero(prior > 0), used)
    if max_vocab is None:
        kept = must_keep | closure(int(i) for i in used) | closure(int(i) for i in prior_only)
    else:
        if len(must_keep) > max_vocab:
            raise TokenizerError(
                f"--max-vocab {max_vocab} is below the {len(must_keep)} tokens that must be kept "
                "(special tokens, --keep-tokens, and the --oov policy's pieces)"
            )
        kept = set(must_keep)
        corpus_score = counts.counts[used] + counts.counts.sum() * prior[used]
        # Most beneficial first; a stable sort keeps lower ids first among equal scores.
        ranked = np.concatenate([used[np.argsort(-corpus_score, kind="stable")], prior_only[np.argsort(-prior[prior_only], kind="stable")]])
        for token_id in ranked:
            if int(token_id) in kept:
                continue
            needed = closure({int(token_id)}) - kept
            if len(kept) + len(needed) <= max_vocab:
                kept |= needed
    return KeptVocab(kept_ids=np.array(sorted(kept), dtype=np.int64), original_size=original_size, unk_id=unk_id)

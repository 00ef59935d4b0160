"""SentencePiece "precompiled charsmaps": read one into a {source: replacement} table, and compile a table into one.

A charsmap is the normalizer inside a SentencePiece model: at each position of the text the longest source that
matches is replaced by its replacement. The SentencepieceTokenizer op applies it before anything else, which makes
it the one string-rewriting tool in onnxruntime-extensions' mobile op set; the in-graph tokenizers use it to run
tokenizer.json's normalizer and pre-tokenizer as a table. Compiling goes through SentencePiece's own builder (a
training run with ``normalization_rule_tsv`` whose only product we keep is the charsmap).
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
from pathlib import Path

# The trie is darts-clone's double array: each 32-bit unit packs a label, a leaf flag and an offset to its children.
_LEAF_FLAG = 1 << 8
_LABEL_MASK = (1 << 31) | 0xFF


def read_charsmap(blob: bytes) -> dict[str, str]:
    """Every (source, replacement) pair stored in a precompiled charsmap (empty blob: no pairs), by source."""
    return dict(_read_charsmap(blob))


@functools.lru_cache(maxsize=4)
def _read_charsmap(blob: bytes) -> tuple[tuple[str, str], ...]:
    """The trie walked breadth first, a whole level at a time with numpy. A node's child with label ``b`` is the unit
    at ``base ^ b`` whose label is ``b``, so every labelled unit names the base it hangs from (``slot ^ label``): one
    sorted index of the units by that base finds each level's children at once, the same units a walk trying the 255
    labels of every node finds (XLM-R's 225,000 rules: about a second, where that walk in Python took half a
    minute). Cached: a pruned and an original .model share the charsmap."""
    import numpy as np

    if not blob:
        return ()
    (trie_bytes,) = struct.unpack_from("<I", blob, 0)
    units = np.frombuffer(blob, dtype="<u4", count=trie_bytes // 4, offset=4).astype(np.int64)
    replacements = blob[4 + trie_bytes :]
    label = units & _LABEL_MASK  # the leaf flag's value units carry bit 31 and are no one's child
    slots = np.flatnonzero((label >= 1) & (label <= 255))
    parent_base = slots ^ label[slots]
    order = np.argsort(parent_base, kind="stable")
    parent_base, slots = parent_base[order], slots[order]
    pairs: list[tuple[str, str]] = []
    frontier, prefixes = np.zeros(1, dtype=np.int64), [b""]
    while frontier.size:
        base = frontier ^ _offsets(units[frontier])
        first, last = np.searchsorted(parent_base, base, "left"), np.searchsorted(parent_base, base, "right")
        counts = last - first
        parents = np.repeat(np.arange(len(frontier)), counts)
        positions = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts)
        frontier = slots[positions]
        labels = label[frontier]
        prefixes = [prefixes[parent] + bytes([byte]) for parent, byte in zip(parents.tolist(), labels.tolist())]
        leaves = np.flatnonzero(units[frontier] & _LEAF_FLAG)
        starts = units[frontier[leaves] ^ _offsets(units[frontier[leaves]])] & ((1 << 31) - 1)
        for leaf, start in zip(leaves.tolist(), starts.tolist()):
            end = replacements.index(b"\0", start)
            pairs.append((prefixes[leaf].decode("utf-8"), replacements[start:end].decode("utf-8")))
    return tuple(sorted(pairs))


def _offsets(units):
    return (units >> 10) << ((units & (1 << 9)) >> 6)


def _offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


def compile_charsmap(pairs: dict[str, str]) -> bytes:
    """The precompiled charsmap SentencePiece builds for ``pairs`` (sources must not contain U+0000)."""
    return _compile_charsmap(tuple(sorted(pairs.items())))


@functools.lru_cache(maxsize=8)
def _compile_charsmap(pairs: tuple[tuple[str, str], ...]) -> bytes:
    """Cached: the plans of one tokenizer pruned differently (the early refusal, the export, the size prediction)
    compile the same tables."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory(prefix="pema-charsmap-") as scratch:
        rules = Path(scratch) / "rules.tsv"
        with rules.open("w", encoding="utf-8") as tsv:
            for source, replacement in pairs:
                if source == replacement:
                    continue  # the builder refuses identity rules; without one the text is left as it is anyway
                tsv.write(f"{_hex(source)}\t{_hex(replacement)}\n")
        model = io.BytesIO()
        # The smallest training run SentencePiece accepts; only its normalizer_spec is kept.
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["ab"] * 4), model_writer=model, model_type="char", vocab_size=6,
            hard_vocab_limit=False, normalization_rule_tsv=str(rules), add_dummy_prefix=False,
            remove_extra_whitespaces=False, minloglevel=2, num_threads=1,
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def _hex(text: str) -> str:
    return " ".join(f"{ord(char):X}" for char in text)

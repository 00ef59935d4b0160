"""SentencePiece "precompiled charsmaps": read one into a {source: replacement} table, and compile a table into one.

A charsmap is the normalizer inside a SentencePiece model: at each position of the text the longest source that
matches is replaced by its replacement. The SentencepieceTokenizer op applies it before anything else, which makes
it the one string-rewriting tool in onnxruntime-extensions' mobile op set; the in-graph tokenizers use it to run
tokenizer.json's normalizer and pre-tokenizer as a table. Compiling goes through SentencePiece's own builder (a
training run with ``normalization_rule_tsv`` whose only product we keep is the charsmap).
"""

from __future__ import annotations

import io
import struct
import tempfile
from pathlib import Path

# The trie is darts-clone's double array: each 32-bit unit packs a label, a leaf flag and an offset to its children.
_LEAF_FLAG = 1 << 8
_LABEL_MASK = (1 << 31) | 0xFF


def read_charsmap(blob: bytes) -> dict[str, str]:
    """Every (source, replacement) pair stored in a precompiled charsmap (empty blob: no pairs)."""
    if not blob:
        return {}
    (trie_bytes,) = struct.unpack_from("<I", blob, 0)
    units = struct.unpack_from(f"<{trie_bytes // 4}I", blob, 4)
    replacements = blob[4 + trie_bytes :]
    pairs: dict[str, str] = {}
    stack = [(0, b"")]
    while stack:
        position, prefix = stack.pop()
        base = position ^ _offset(units[position])
        for byte in range(1, 256):
            child = base ^ byte
            if child >= len(units) or (units[child] & _LABEL_MASK) != byte:
                continue
            key = prefix + bytes([byte])
            if units[child] & _LEAF_FLAG:
                start = units[child ^ _offset(units[child])] & ((1 << 31) - 1)
                end = replacements.index(b"\0", start)
                pairs[key.decode("utf-8")] = replacements[start:end].decode("utf-8")
            stack.append((child, key))
    return pairs


def _offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


def compile_charsmap(pairs: dict[str, str]) -> bytes:
    """The precompiled charsmap SentencePiece builds for ``pairs`` (sources must not contain U+0000)."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory(prefix="pema-charsmap-") as scratch:
        rules = Path(scratch) / "rules.tsv"
        with rules.open("w", encoding="utf-8") as tsv:
            for source, replacement in sorted(pairs.items()):
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

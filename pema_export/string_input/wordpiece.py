"""WordPiece (BERT, DistilBERT, MiniLM, ELECTRA) in the graph, exact, with the mobile packages' ops only.

onnxruntime-extensions' BertTokenizer op does not reproduce tokenizers: its lowercasing and accent stripping cover
Latin-1 and a few Greek/Cyrillic letters, its punctuation and whitespace lists are partial, and when a word cannot be
segmented it keeps the pieces found before the failure (tokenizers makes the whole word [UNK]). So the op is used
only for what it does right, greedy longest-match over words split on spaces, and everything else is a table:

1. SentencepieceTokenizer with a model of our own runs a precompiled charsmap holding, for every code point, what
   tokenizer.json's normalizer and pre-tokenizer make of it: lowercased/stripped/removed as the normalizer says,
   whitespace -> a space, punctuation and CJK isolated. Every word boundary gets a marker word B, a character no
   vocabulary token can contain becomes the placeholder P, and each added token's literal text becomes its own
   word X_i (tokenizers splits added tokens out of the raw text first). The model has only the 256 byte pieces
   with byte fallback, so SentencepieceDecoder gives back the normalized text byte for byte.
2. BertTokenizer (basic tokenization off) segments each space-separated word with the vocabulary, in which the
   added tokens' lines read X_i and one extra line reads B.
3. Standard ops repair failures: a word (between two B's) that contains [UNK] becomes a single [UNK].

The table is computed from tokenizers itself, character by character, so it is exact wherever tokenizers treats
characters independently. The normalizers where that holds are accepted; anything else is refused.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from pema_export.errors import InGraphTokenizerError
from pema_export.string_input.charsmap import compile_charsmap
from pema_export.string_input.graph import Builder

# Per-character normalizers (each code point's output does not depend on its neighbours).
LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "StripAccents"}
LOCAL_PRE_TOKENIZERS = {"BertPreTokenizer", "WhitespaceSplit"}
OP_MAX_WORD_CHARS = 100  # BertTokenizer's WordpieceTokenizer is built with this bound and no attribute changes it

# Placeholders from the Supplementary Private Use Area: tokenizers' BertNormalizer removes these code points from
# real text, and the table maps any that are typed to P, so they cannot be confused with the markers.
BOUNDARY = "\U000F0000"
UNKNOWN_CHAR = "\U000F0001"
ADDED_BASE = 0xF0100
UNUSED_SOURCE = "\U000F0002"  # the decoder's one charsmap rule: a code point no normalized text holds
SEPARATOR = "\U0001F600"  # joins code points when asking tokenizers for all of them at once; left alone by these normalizers


@dataclass(frozen=True)
class WordPiecePlan:
    normalizer_model: bytes  # SentencePiece model: the charsmap and the byte pieces
    decoder_model: bytes  # the same pieces without the charsmap, for SentencepieceDecoder
    vocab_lines: tuple[str, ...]  # BertTokenizer's vocabulary, one line per id, plus the boundary line
    unk_line: str
    prefix: str  # continuing_subword_prefix
    unk_id: int
    boundary_id: int
    charsmap_entries: int
    known_differences: tuple[str, ...] = ()
    ops: tuple[str, ...] = ("SentencepieceTokenizer", "SentencepieceDecoder", "BertTokenizer")

    def body(self, b: Builder, text: str) -> str:
        """Nodes from one text ([1] string) to its content ids."""
        pieces, _rows = b.contrib(
            "SentencepieceTokenizer",
            [text, b.int64(0), b.const(np.float32(0)), b.const(np.array(False)), b.const(np.array(False)), b.const(np.array(False))],
            2, model=self.normalizer_model,
        )
        normalized = b.contrib("SentencepieceDecoder", [b.op("Cast", [pieces], to=TensorProto.INT64)], model=self.decoder_model)
        ids, _types, _mask = b.contrib(
            "BertTokenizer", [normalized], 3,
            vocab_file="\n".join(self.vocab_lines), do_basic_tokenize=0, do_lower_case=0, strip_accents=0,
            tokenize_chinese_chars=0, suffix_indicator=self.prefix, unk_token=self.unk_line, sep_token=self.unk_line,
            pad_token=self.unk_line, cls_token=self.unk_line, mask_token=self.unk_line, max_length=-1,
        )
        raw = b.op("Slice", [ids, b.int64([1]), b.int64([-1])])  # the op's own [CLS] ... [SEP]
        return _whole_word_unk(b, raw, self.boundary_id, self.unk_id)


def _whole_word_unk(b: Builder, raw: str, boundary_id: int, unk_id: int) -> str:
    """Drop the boundary markers; a word holding [UNK] becomes one [UNK] (tokenizers' rule; the op keeps the
    pieces it found before the failure)."""
    count = b.length(raw)
    positions = b.arange(count)
    is_boundary = b.op("Equal", [raw, b.int64(boundary_id)])
    boundaries = b.op("Compress", [positions, is_boundary], axis=0)
    word = b.op("CumSum", [b.flag(is_boundary), b.int64(0)])  # boundaries at or before each position
    word_start = b.gather(b.op("Add", [b.op("Concat", [b.int64([-1]), boundaries], axis=0), b.int64(1)]), word)
    word_end = b.gather(b.op("Concat", [boundaries, count], axis=0), word)
    unk_before = b.op("Concat", [b.int64([0]), b.op("CumSum", [b.flag(b.op("Equal", [raw, b.int64(unk_id)])), b.int64(0)])], axis=0)
    unks_in_word = b.op("Sub", [b.gather(unk_before, word_end), b.gather(unk_before, word_start)])
    failed = b.op("Greater", [unks_in_word, b.int64(0)])
    first = b.op("Equal", [positions, word_start])
    keep = b.op("And", [b.op("Not", [is_boundary]), b.op("Or", [b.op("Not", [failed]), first])])
    return b.op("Compress", [b.op("Where", [failed, b.int64(unk_id), raw]), keep], axis=0)


def plan(tokenizer_json: dict) -> WordPiecePlan:
    """Check that the family can be reproduced exactly and build its tables; raise InGraphTokenizerError if not."""
    return _plan(json.dumps(tokenizer_json, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _plan(tokenizer_text: str) -> WordPiecePlan:
    tokenizer_json = json.loads(tokenizer_text)
    model = tokenizer_json["model"]
    _check_components(tokenizer_json)
    if int(model.get("max_input_chars_per_word", OP_MAX_WORD_CHARS)) != OP_MAX_WORD_CHARS:
        raise InGraphTokenizerError(
            f"WordPiece max_input_chars_per_word is {model['max_input_chars_per_word']}; the BertTokenizer op is fixed "
            f"at {OP_MAX_WORD_CHARS}"
        )
    vocab = model["vocab"]
    size = max(vocab.values()) + 1
    if sorted(vocab.values()) != list(range(size)):
        raise InGraphTokenizerError("the WordPiece vocabulary's ids are not 0..n-1 without gaps; the op numbers tokens by line")
    lines = [""] * size
    for token, index in vocab.items():
        lines[index] = token if token and "\n" not in token and "\r" not in token else f"unreachable {index}"
    added = _added_tokens(tokenizer_json, size)
    for number, token in enumerate(added):
        lines[token["id"]] = chr(ADDED_BASE + number)
    unk_token = model["unk_token"]
    if unk_token not in vocab:
        raise InGraphTokenizerError(f"the WordPiece unk token {unk_token!r} is not in the vocabulary")
    unk_id = vocab[unk_token]
    boundary_id = len(lines)
    lines.append(BOUNDARY)
    # a character no line (reachable by a word) contains can only make its word [UNK]
    vocabulary_chars = set().union(*(set(line) for line in lines[:size] if not line.startswith("unreachable ")))
    vocabulary_chars -= {chr(ADDED_BASE + n) for n in range(len(added))}

    entries = _character_table(tokenizer_json, vocabulary_chars)
    for number, token in enumerate(added):
        entries[token["content"]] = f" {BOUNDARY} {chr(ADDED_BASE + number)} {BOUNDARY} "
    charsmap = compile_charsmap(entries)
    return WordPiecePlan(
        normalizer_model=_byte_model(charsmap),
        # the decoder never normalizes, but SentencePiece logs a line for a model without a charsmap on every load
        decoder_model=_byte_model(compile_charsmap({UNUSED_SOURCE: UNKNOWN_CHAR})),
        vocab_lines=tuple(lines),
        unk_line=lines[unk_id],
        prefix=model.get("continuing_subword_prefix", "##"),
        unk_id=unk_id,
        boundary_id=boundary_id,
        charsmap_entries=len(entries),
    )


def _check_components(tokenizer_json: dict) -> None:
    normalizer = tokenizer_json.get("normalizer")
    kinds = [n["type"] for n in normalizer.get("normalizers", [])] if normalizer and normalizer["type"] == "Sequence" else (
        [normalizer["type"]] if normalizer else []
    )
    foreign = [kind for kind in kinds if kind not in LOCAL_NORMALIZERS]
    if foreign:
        raise InGraphTokenizerError(
            f"normalizer {', '.join(foreign)} is not supported in the graph for WordPiece (supported: "
            f"{', '.join(sorted(LOCAL_NORMALIZERS))}: they treat each character on its own)"
        )
    if "NFD" in kinds and "StripAccents" not in kinds[kinds.index("NFD"):]:
        raise InGraphTokenizerError("normalizer NFD without StripAccents after it reorders combining marks across "
                                    "characters, which a per-character table cannot do")
    pre = tokenizer_json.get("pre_tokenizer")
    if not pre or pre["type"] not in LOCAL_PRE_TOKENIZERS:
        raise InGraphTokenizerError(
            f"pre-tokenizer {pre['type'] if pre else None} is not supported in the graph for WordPiece "
            f"(supported: {', '.join(sorted(LOCAL_PRE_TOKENIZERS))})"
        )


def _added_tokens(tokenizer_json: dict, size: int) -> list[dict]:
    added = []
    for token in tokenizer_json.get("added_tokens", []):
        content = token["content"]
        if token.get("single_word"):
            raise InGraphTokenizerError(f"added token {content!r} is single_word; the graph cannot check word boundaries around it")
        if token.get("normalized") and tokenizer_json.get("normalizer"):
            raise InGraphTokenizerError(f"added token {content!r} is matched after normalization (e.g. in any case); the graph matches added tokens in the raw text")
        if not content or "\0" in content:
            raise InGraphTokenizerError(f"added token {content!r} cannot be matched in text")
        if not 0 <= token["id"] < size:
            raise InGraphTokenizerError(f"added token {content!r} (id {token['id']}) is outside the WordPiece vocabulary")
        added.append(token)
    return added


def _character_table(tokenizer_json: dict, vocabulary_chars: set[str]) -> dict[str, str]:
    """{character: what the op must see instead}, for every code point tokenizers does not leave alone."""
    layout = _character_layout(json.dumps({key: tokenizer_json.get(key) for key in ("normalizer", "pre_tokenizer")}, sort_keys=True))
    entries = {}
    for char, spelled in layout:
        # a character no vocabulary token holds makes its word [UNK] whatever it is: one shared placeholder keeps
        # the table small
        entries[char] = "".join(
            f" {BOUNDARY} " if kind == "space" else
            f" {BOUNDARY} {out if out in vocabulary_chars else UNKNOWN_CHAR} {BOUNDARY} " if kind == "isolated" else
            (out if out in vocabulary_chars else UNKNOWN_CHAR)
            for out, kind in spelled
        )
    return entries


@functools.lru_cache(maxsize=2)
def _character_layout(components: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """Per code point tokenizers does not leave alone: the characters the normalizer makes of it, each with its
    pre-tokenizer role ("word", "space", "isolated"). It depends on the normalizer and pre-tokenizer only, not on
    the vocabulary, so plans of the same tokenizer pruned differently (the size prediction's) share it."""
    from tokenizers import Tokenizer

    stub = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}, **json.loads(components)}
    tokenizer = Tokenizer.from_str(json.dumps(stub))
    code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    normalized = _normalize_each(tokenizer, code_points)
    outputs = sorted({char for text in normalized.values() for char in text} | {chr(c) for c in code_points})
    role = _pre_tokenizer_roles(tokenizer, outputs)
    layout = []
    for code_point in code_points:
        char = chr(code_point)
        text = normalized.get(code_point, char)
        if text == char and role.get(char, "word") == "word":
            continue  # the op keeps it inside its word as tokenizers does
        layout.append((char, tuple((out, role.get(out, "word")) for out in text)))
    return tuple(layout)


def _normalize_each(tokenizer, code_points: list[int], chunk: int = 50_000) -> dict[int, str]:
    """{code point: its normalized text} for those the normalizer changes (tokenizers, batched with a separator)."""
    normalizer = tokenizer.normalizer
    if normalizer is None:
        return {}
    if normalizer.normalize_str(SEPARATOR) != SEPARATOR:
        raise InGraphTokenizerError("the normalizer changes U+1F600, which the table builder relies on")
    changed = {}
    points = [c for c in code_points if chr(c) != SEPARATOR]
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        parts = normalizer.normalize_str(SEPARATOR + SEPARATOR.join(map(chr, block)) + SEPARATOR).split(SEPARATOR)[1:-1]
        if len(parts) != len(block):
            raise InGraphTokenizerError("the normalizer does not treat characters independently; refusing a table for it")
        changed.update((c, text) for c, text in zip(block, parts) if text != chr(c))
    return changed


def _pre_tokenizer_roles(tokenizer, chars: list[str], chunk: int = 50_000) -> dict[str, str]:
    """{char: "space" | "isolated"} as the pre-tokenizer treats each between two letters; the rest stay in words."""
    roles = {}
    for start in range(0, len(chars), chunk):
        block = chars[start : start + chunk]
        text = "".join(f"a{char}a" for char in block)
        covered = np.zeros(len(text), dtype=bool)
        single = np.zeros(len(text), dtype=bool)
        for _piece, (begin, end) in tokenizer.pre_tokenizer.pre_tokenize_str(text):
            covered[begin:end] = True
            if end - begin == 1:
                single[begin] = True
        for index, char in enumerate(block):
            position = 3 * index + 1
            if not covered[position]:
                roles[char] = "space"
            elif single[position]:
                roles[char] = "isolated"
    return roles


def _byte_model(charsmap: bytes) -> bytes:
    """A SentencePiece BPE model with only the 256 byte pieces: every character falls back to its bytes, so
    encoding then decoding returns the (normalized) text unchanged."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    unknown = proto.pieces.add()
    unknown.piece, unknown.score, unknown.type = "<unk>", 0.0, model_pb2.ModelProto.SentencePiece.UNKNOWN
    for byte in range(256):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"<0x{byte:02X}>", 0.0, model_pb2.ModelProto.SentencePiece.BYTE
    spec = proto.trainer_spec
    spec.model_type = model_pb2.TrainerSpec.BPE
    spec.vocab_size = len(proto.pieces)
    spec.byte_fallback = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, -1, -1, -1
    normalizer = proto.normalizer_spec
    normalizer.name = "pema_wordpiece"
    normalizer.precompiled_charsmap = charsmap
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = True  # one space between words, none at the ends: the op splits on each space
    normalizer.escape_whitespaces = False
    return proto.SerializeToString(deterministic=True)

"""Unigram with a SentencePiece model (XLM-R, T5-style) in the graph: onnxruntime-extensions' SentencepieceTokenizer.

The op runs SentencePiece itself on the shipped ``*.model`` (pruned with the vocabulary), so the normalization
(the model's precompiled charsmap, which tokenizer.json copies as its ``Precompiled`` normalizer) and the Viterbi
segmentation are SentencePiece's own. What tokenizers does differently, and how the graph matches it:

- Added tokens (``<s>``, ``<mask>``, ...) are split out of the raw text first, and each piece between them is
  tokenized on its own. The charsmap gets one more source per added token, its literal text, replaced by a
  placeholder word that a piece of our own turns into the token's id; for an ``lstrip`` token the whitespace
  before it is part of the source, for the others a whitespace before it becomes the "▁" piece tokenizers emits
  for the trailing space of the piece before.
- A text (or the piece after the last added token) that ends in whitespace ends with a "▁" token in tokenizers,
  where SentencePiece strips it; a second, tiny SentencePiece model tells whether the normalized text ends in a
  space, and the graph appends the id then.
- SentencePiece ids become tokenizer.json ids through a table (XLM-R's fairseq offset included).

Refused: Unigram without a SentencePiece ``.model`` (the op needs one), normalizers other than the model's own
charsmap and the whitespace collapse the converter adds (ALBERT's lowercasing/NFKD/accent stripping), byte fallback,
user-defined pieces, a Metaspace that does not prepend to every piece, added tokens with ``rstrip``/``single_word``.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from pema_export.errors import InGraphTokenizerError
from pema_export.string_input.charsmap import compile_charsmap, read_charsmap
from pema_export.string_input.graph import Builder

WHITE_SPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
PLACEHOLDER_BASE = 0xF0200  # Supplementary Private Use Area: one placeholder per added token, then the space piece
METASPACE = "\u2581"


@dataclass(frozen=True)
class UnigramPlan:
    model: bytes  # the shipped SentencePiece model with the augmented charsmap and the placeholder pieces
    detector: bytes | None  # a two-piece model whose last id says whether the normalized text ends in a space
    to_tokenizer_ids: np.ndarray  # SentencePiece id -> tokenizer.json id
    space_id: int  # tokenizer.json's id for a lone "▁" word
    known_differences: tuple[str, ...] = ()
    ops: tuple[str, ...] = ("SentencepieceTokenizer",)

    def body(self, b: Builder, text: str) -> str:
        defaults = [b.int64(0), b.const(np.float32(0)), b.const(np.array(False)), b.const(np.array(False)), b.const(np.array(False))]
        pieces, _rows = b.contrib("SentencepieceTokenizer", [text, *defaults], 2, model=self.model)
        content = b.gather(b.const(self.to_tokenizer_ids, "sp_to_tokenizer"), b.op("Cast", [pieces], to=TensorProto.INT64))
        if self.detector is None:
            return content
        tail, _rows2 = b.contrib("SentencepieceTokenizer", [text, *defaults], 2, model=self.detector)
        last = b.op("Slice", [b.op("Concat", [b.int64([0]), b.op("Cast", [tail], to=TensorProto.INT64)], axis=0), b.int64([-1]), b.int64([2**62])])
        ends_in_space = b.op("Equal", [last, b.int64([1])])
        return b.op("Concat", [content, b.op("Compress", [b.int64([self.space_id]), ends_in_space], axis=0)], axis=0)


def plan(tokenizer_json: dict, sentencepiece_model: bytes | None) -> UnigramPlan:
    if not sentencepiece_model:
        raise InGraphTokenizerError(
            "Unigram without a SentencePiece .model: the in-graph op (SentencepieceTokenizer) runs SentencePiece, which "
            "needs one; the model folder has only tokenizer.json"
        )
    return _plan(json.dumps(tokenizer_json, sort_keys=True), bytes(sentencepiece_model))


@functools.lru_cache(maxsize=4)
def _plan(tokenizer_text: str, sentencepiece_model: bytes) -> UnigramPlan:
    from sentencepiece import sentencepiece_model_pb2 as model_pb2
    from tokenizers import Tokenizer

    tokenizer_json = json.loads(tokenizer_text)
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(sentencepiece_model)
    except Exception:
        raise InGraphTokenizerError("the SentencePiece .model does not parse") from None
    trailing_space = _check_model(proto, tokenizer_json)
    vocab = {piece: index for index, (piece, _score) in enumerate(tokenizer_json["model"]["vocab"])}
    unk_id = tokenizer_json["model"].get("unk_id")
    if unk_id is None:
        raise InGraphTokenizerError("Unigram without an unk piece: tokenizers fails on unknown characters, SentencePiece does not")
    to_ids = []
    Piece = model_pb2.ModelProto.SentencePiece
    for piece in proto.pieces:
        if piece.type == Piece.UNKNOWN:
            to_ids.append(unk_id)
        elif piece.piece in vocab:
            to_ids.append(vocab[piece.piece])
        elif piece.type == Piece.CONTROL:
            to_ids.append(-1)  # never produced from text
        else:
            raise InGraphTokenizerError(f"SentencePiece piece {piece.piece!r} is not in tokenizer.json's vocabulary")
    tokenizer = Tokenizer.from_str(tokenizer_text)
    space_ids = [t.id for t in tokenizer.model.tokenize(METASPACE)]  # a lone "▁" word
    if len(space_ids) != 1:
        raise InGraphTokenizerError(f"tokenizer.json's Unigram model splits a lone '▁' into {space_ids}; expected one id")
    charsmap = read_charsmap(proto.normalizer_spec.precompiled_charsmap)
    spacing = _whitespace_sources(charsmap)

    added = tokenizer_json.get("added_tokens", [])
    entries = dict(charsmap)
    placeholders = [chr(PLACEHOLDER_BASE + n) for n in range(len(added) + 1)]
    space_placeholder = placeholders[-1]
    taken = set(charsmap) | {ch for v in charsmap.values() for ch in v}
    if taken & set(placeholders):
        raise InGraphTokenizerError("the SentencePiece charsmap already uses the placeholder code points")
    unknown_char = chr(PLACEHOLDER_BASE - 1)
    for placeholder in placeholders:
        entries[placeholder] = unknown_char  # typed by a user, a placeholder reads as the unknown character it is
    for token, placeholder in zip(added, placeholders):
        content = token["content"]
        if token.get("rstrip") or token.get("single_word"):
            raise InGraphTokenizerError(f"added token {content!r} has rstrip/single_word; the SentencePiece op cannot reproduce it")
        if token.get("normalized") and not token.get("special"):
            raise InGraphTokenizerError(f"added token {content!r} is matched after normalization; the graph matches added tokens in the raw text")
        if not content or "\0" in content:
            raise InGraphTokenizerError(f"added token {content!r} cannot be matched in text")
        entries.update(_added_token_sources(content, f" {placeholder} ", f" {space_placeholder} {placeholder} ",
                                            bool(token.get("lstrip")), bool(token.get("normalized")), trailing_space, spacing))
    augmented = model_pb2.ModelProto()
    augmented.CopyFrom(proto)
    augmented.normalizer_spec.precompiled_charsmap = compile_charsmap(entries)
    for token, placeholder in zip(added, placeholders):
        _add_piece(augmented, METASPACE + placeholder)
        to_ids.append(token["id"])
    _add_piece(augmented, METASPACE + space_placeholder)
    to_ids.append(space_ids[0])
    augmented.trainer_spec.vocab_size = len(augmented.pieces)
    return UnigramPlan(
        model=augmented.SerializeToString(deterministic=True),
        detector=_detector_model({source: " " for source in spacing} | {s: "" for s, v in charsmap.items() if v == ""}) if trailing_space else None,
        to_tokenizer_ids=np.asarray(to_ids, dtype=np.int64),
        space_id=space_ids[0],
        known_differences=_known_differences(charsmap, trailing_space, [t for t in added if t.get("normalized")]),
    )


def _known_differences(charsmap: dict[str, str], trailing_space: bool, normalized_tokens: list[dict]) -> tuple[str, ...]:
    """What the sweep over every code point (and the docs) found the graph does not reproduce, for this tokenizer."""
    found = []
    # whitespace the charsmap leaves as something other than spaces: SentencePiece strips only spaces
    kept_space = [f"U+{c:04X}" for c in sorted(WHITE_SPACE) if charsmap.get(chr(c), chr(c)).strip(" ")]
    if not trailing_space and kept_space:
        found.append(f"{', '.join(kept_space)} at the end of a text: tokenizers strips it, SentencePiece keeps it as a character")
    if normalized_tokens:
        names = ", ".join(repr(t["content"]) for t in normalized_tokens)
        found.append(f"added token(s) {names} spelled in characters that normalize to them (e.g. full width): tokenizers "
                     "matches them after normalization, the graph in the raw text only")
    return tuple(found)


def _added_token_sources(content: str, token: str, space_then_token: str, lstrip: bool, normalized: bool,
                         trailing_space: bool, spacing: set[str]) -> dict[str, str]:
    """Charsmap sources for an added token and the whitespace before it, as tokenizers treats that whitespace.

    ``token`` is the placeholder word, ``space_then_token`` the same after a "▁" word. tokenizers matches a token
    with ``normalized`` in the normalized text, where runs of spaces are already collapsed: to one space (older
    converters, ``trailing_space``) or to a "▁" that is not whitespace (newer ones, which also strip each text's end)."""
    sources = {content: token}
    raw_space = [chr(c) for c in sorted(WHITE_SPACE)]
    if not normalized:
        if lstrip:  # the whitespace goes with the token
            sources.update({w + content: token for w in raw_space})
        elif trailing_space:  # the text before ends in a space: a "▁" word
            sources.update({w + content: space_then_token for w in spacing})
    elif trailing_space:
        sources.update({w + content: token if lstrip else space_then_token for w in spacing})
    else:
        # one space before the token: swallowed by lstrip, else a "▁" word; two or more became "▁" already
        sources.update({w + content: token if lstrip else space_then_token for w in spacing})
        if lstrip:
            sources.update({a + b + content: space_then_token for a in spacing for b in spacing})
    return sources


def _check_model(proto, tokenizer_json: dict) -> bool:
    """Refuse what the op cannot do; return whether tokenizer.json keeps a piece's trailing space as a \"▁\" token."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    if proto.trainer_spec.model_type != model_pb2.TrainerSpec.UNIGRAM:
        raise InGraphTokenizerError("the SentencePiece .model is not a Unigram model")
    if proto.trainer_spec.byte_fallback or tokenizer_json["model"].get("byte_fallback"):
        raise InGraphTokenizerError("Unigram with byte fallback: not reproduced in the graph")
    if any(p.type == model_pb2.ModelProto.SentencePiece.USER_DEFINED for p in proto.pieces):
        raise InGraphTokenizerError("the SentencePiece .model has user-defined pieces, which tokenizer.json treats differently")
    spec = proto.normalizer_spec
    if not (spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces) or proto.trainer_spec.treat_whitespace_as_suffix:
        raise InGraphTokenizerError("the SentencePiece .model's whitespace handling is not the standard one (dummy prefix, collapsed spaces)")
    normalizer = tokenizer_json.get("normalizer") or {}
    steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" else [normalizer]
    kinds = [step.get("type") for step in steps]
    if spec.precompiled_charsmap:
        charsmap = base64.b64encode(spec.precompiled_charsmap).decode()
        if kinds[:1] != ["Precompiled"] or steps[0].get("precompiled_charsmap") != charsmap:
            raise InGraphTokenizerError(
                f"tokenizer.json's normalizer ({' + '.join(k or 'none' for k in kinds)}) is not the .model's own charsmap "
                "(plus the whitespace handling): the SentencePiece op applies only the .model's normalization"
            )
        steps = steps[1:]
    # what transformers' converter writes: older versions keep a piece's trailing space, newer ones strip it
    legacy = [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    current = [{"type": "Strip", "strip_left": False, "strip_right": True}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": METASPACE}]
    if steps not in (legacy, current):
        raise InGraphTokenizerError(
            f"tokenizer.json's normalizer ({' + '.join(k or 'none' for k in kinds)}) adds more than the .model's charsmap and "
            "its whitespace handling (e.g. lowercasing, NFKD, accent stripping): the SentencePiece op cannot apply it"
        )
    pre = tokenizer_json.get("pre_tokenizer") or {}
    trailing_space = steps == legacy
    always = pre.get("prepend_scheme", "always" if pre.get("add_prefix_space", True) else "never") == "always"
    if pre.get("type") != "Metaspace" or pre.get("replacement", METASPACE) != METASPACE or not always or not pre.get("split", True):
        raise InGraphTokenizerError(f"pre-tokenizer {pre.get('type')} ({pre.get('prepend_scheme')}): the graph reproduces Metaspace prepending '▁' to every piece")
    return trailing_space


def _whitespace_sources(charsmap: dict[str, str]) -> set[str]:
    """Characters that normalize to a trailing space (the space itself included); each must be a single-character
    source no longer source starts with, so that the last characters of a text decide whether it ends in a space."""
    spacing = {source for source, value in charsmap.items() if value.endswith(" ")} | {" "}
    vanishing = {source for source, value in charsmap.items() if value == ""}
    if any(len(source) > 1 for source in spacing | vanishing):
        raise InGraphTokenizerError("the SentencePiece charsmap maps a character sequence to whitespace; not reproduced in the graph")
    starts = {source[0] for source in charsmap if len(source) > 1}
    if starts & (spacing | vanishing):
        raise InGraphTokenizerError("the SentencePiece charsmap has sequences starting with whitespace; not reproduced in the graph")
    return spacing


def _add_piece(proto, text: str) -> None:
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    piece = proto.pieces.add()
    piece.piece, piece.score, piece.type = text, 0.0, model_pb2.ModelProto.SentencePiece.NORMAL


def _detector_model(charsmap: dict[str, str]) -> bytes:
    """SentencePiece with the pieces <unk> and "▁" only, spaces kept as they are: the last id is 1 exactly when the
    normalized text ends in a space."""
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    for text, kind, score in (("<unk>", model_pb2.ModelProto.SentencePiece.UNKNOWN, 0.0), (METASPACE, model_pb2.ModelProto.SentencePiece.NORMAL, -1.0)):
        piece = proto.pieces.add()
        piece.piece, piece.type, piece.score = text, kind, score
    proto.trainer_spec.model_type = model_pb2.TrainerSpec.UNIGRAM
    proto.trainer_spec.vocab_size = 2
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id = 0, -1, -1, -1
    spec = proto.normalizer_spec
    spec.name = "pema_trailing_space"
    spec.precompiled_charsmap = compile_charsmap(charsmap)
    spec.add_dummy_prefix, spec.remove_extra_whitespaces, spec.escape_whitespaces = False, False, True
    return proto.SerializeToString(deterministic=True)

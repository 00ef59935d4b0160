"""Byte-level BPE (RoBERTa, GPT-2-style) in the graph: onnxruntime-extensions' GPT2Tokenizer op.

The op splits the text on the added tokens it is given, pre-tokenizes with GPT-2's pattern, maps bytes to the
byte-level alphabet and applies the merges: what tokenizers does with a ByteLevel pre-tokenizer and no normalizer.
Two differences are handled here:

- an added token with ``lstrip`` (RoBERTa's ``<mask>``) swallows the whitespace before it in tokenizers; the op
  keeps that whitespace as its own tokens, so standard ops drop whitespace-only tokens that run up to one;
- the op takes a pre-token that is a whole vocabulary entry as is, where tokenizers applies the merges; the plan
  refuses a vocabulary where the two differ (it checks every entry).

Refused: a normalizer, other pre-tokenizers, ``add_prefix_space``, BPE dropout or byte fallback, added tokens with
``rstrip`` or ``single_word``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from pema_export.errors import InGraphTokenizerError
from pema_export.string_input.graph import Builder

# What tokenizers' lstrip swallows: Rust's char::is_whitespace (the Unicode White_Space property).
WHITE_SPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


@dataclass(frozen=True)
class BpePlan:
    vocab_json: str
    merges: str
    added_tokens: str  # "content=id" lines for the op's added_token attribute
    whitespace_ids: np.ndarray  # 0/1 per id: the token is whitespace only
    lstrip_ids: np.ndarray  # 0/1 per id: an added token that swallows the whitespace before it
    known_differences: tuple[str, ...] = ()
    ops: tuple[str, ...] = ("GPT2Tokenizer",)

    def body(self, b: Builder, text: str) -> str:
        attrs = dict(vocab=self.vocab_json, merges=self.merges)
        if self.added_tokens:
            attrs["added_token"] = self.added_tokens
        ids, _mask = b.contrib("GPT2Tokenizer", [text], 2, **attrs)
        content = b.op("Reshape", [ids, b.int64([-1])])
        if not self.lstrip_ids.any():
            return content
        return _drop_whitespace_before(b, content, self.whitespace_ids, self.lstrip_ids)


def _drop_whitespace_before(b: Builder, ids: str, whitespace: np.ndarray, lstrip: np.ndarray) -> str:
    """Remove each run of whitespace-only tokens that an lstrip token follows."""
    count = b.length(ids)
    positions = b.arange(count)
    is_space = b.isin(ids, whitespace)
    solid = b.op("Not", [is_space])
    solid_positions = b.op("Concat", [b.op("Compress", [positions, solid], axis=0), count], axis=0)
    next_solid = b.gather(solid_positions, b.op("CumSum", [b.flag(solid), b.int64(0)]))
    lstrip_here = b.op("Concat", [b.flag(b.isin(ids, lstrip)), b.int64([0])], axis=0)
    swallowed = b.op("And", [is_space, b.op("Equal", [b.gather(lstrip_here, next_solid), b.int64(1)])])
    return b.op("Compress", [ids, b.op("Not", [swallowed])], axis=0)


def plan(tokenizer_json: dict) -> BpePlan:
    return _plan(json.dumps(tokenizer_json, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _plan(tokenizer_text: str) -> BpePlan:
    from tokenizers import Tokenizer

    tokenizer_json = json.loads(tokenizer_text)
    model = tokenizer_json["model"]
    if tokenizer_json.get("normalizer"):
        raise InGraphTokenizerError(f"BPE with normalizer {tokenizer_json['normalizer']['type']}: the GPT2Tokenizer op has none")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise InGraphTokenizerError(f"BPE with pre-tokenizer {pre.get('type')}: the GPT2Tokenizer op does byte-level with GPT-2's pattern only")
    if pre.get("add_prefix_space"):
        raise InGraphTokenizerError("byte-level BPE with add_prefix_space: the GPT2Tokenizer op does not add it")
    for key, label in (("dropout", "BPE dropout"), ("byte_fallback", "byte fallback"), ("continuing_subword_prefix", "a subword prefix"),
                       ("end_of_word_suffix", "an end-of-word suffix")):
        if model.get(key):
            raise InGraphTokenizerError(f"BPE with {label}: the GPT2Tokenizer op has none")
    vocab = model["vocab"]
    size = max(vocab.values()) + 1
    pairs = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    if any(len(pair) != 2 or any(" " in part or "\n" in part for part in pair) for pair in pairs):
        raise InGraphTokenizerError("a BPE merge holds a space or newline; the GPT2Tokenizer op reads merges as 'a b' lines")
    merges = [" ".join(pair) for pair in pairs]
    tokenizer = Tokenizer.from_str(tokenizer_text)
    _check_whole_word_entries(tokenizer, vocab, {t["content"] for t in tokenizer_json.get("added_tokens", [])})

    whitespace = np.zeros(size, dtype=np.int64)
    byte_decoder = _byte_decoder()
    for token, index in vocab.items():
        try:
            decoded = bytes(byte_decoder[ch] for ch in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue  # not a byte-level token, or part of a character: never whitespace on its own
        whitespace[index] = bool(decoded) and all(ord(ch) in WHITE_SPACE for ch in decoded)
    lstrip = np.zeros(size, dtype=np.int64)
    lines = []
    for token in tokenizer_json.get("added_tokens", []):
        content = token["content"]
        if token.get("rstrip") or token.get("single_word"):
            raise InGraphTokenizerError(f"added token {content!r} has rstrip/single_word; the GPT2Tokenizer op cannot reproduce it")
        if "\n" in content or "=" in content or "\0" in content:
            raise InGraphTokenizerError(f"added token {content!r} cannot be passed to the GPT2Tokenizer op")
        if token["id"] >= size:
            raise InGraphTokenizerError(f"added token {content!r} (id {token['id']}) is outside the BPE vocabulary")
        lines.append(f"{content}={token['id']}")
        if token.get("lstrip"):
            lstrip[token["id"]] = 1
    result = BpePlan(json.dumps(vocab, ensure_ascii=False), "\n".join(merges), "\n".join(lines), whitespace, lstrip)
    _check_lstrip(result, tokenizer, [t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("lstrip")])
    return result


def _check_lstrip(plan: BpePlan, tokenizer, lstrip_tokens: list[str]) -> None:
    """Whitespace swallowed by an lstrip token is dropped token by token; that is exact only where the op's tokens
    for the whitespace are whole characters. Try every whitespace character before each such token."""
    if not lstrip_tokens:
        return
    from pema_export.string_input.graph import run_body

    contexts = ["a{w}{t}", "a {w}{t}", "a{w}{w}{t}", "{w}{t}", "a{w} {t}"]
    cases = [(w, c.format(w=chr(w), t=t)) for t in lstrip_tokens for w in sorted(WHITE_SPACE) for c in contexts]
    texts = [text for _, text in cases]
    expected = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    failing = sorted({w for (w, _), got, want in zip(cases, run_body(plan.body, texts), expected) if got != want})
    failing = [f"U+{w:04X}" for w in failing]
    if failing:
        raise InGraphTokenizerError(
            f"added token(s) {', '.join(map(repr, lstrip_tokens))} swallow the whitespace before them (lstrip); the op's "
            f"byte tokens for {', '.join(failing[:6])} do not line up with characters, so it cannot be dropped exactly"
        )


def _check_whole_word_entries(tokenizer, vocab: dict[str, int], added: set[str]) -> None:
    """The op looks a whole pre-token up in the vocabulary before merging; tokenizers merges. Every entry that can
    be a whole pre-token must be what the merges make of it."""
    model, byte_decoder = tokenizer.model, _byte_decoder()
    different = []
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        if len(token) < 2 or token in added or [t.id for t in model.tokenize(token)] == [index]:
            continue
        try:
            text = bytes(byte_decoder[ch] for ch in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue  # not a whole character sequence: never a whole pre-token
        if [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)] == [token]:
            different.append(token)
    if different:
        raise InGraphTokenizerError(
            f"{len(different)} BPE vocabulary entries are not what the merges make of them (e.g. {different[0]!r}); "
            "the GPT2Tokenizer op would take them whole"
        )


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, reversed."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}

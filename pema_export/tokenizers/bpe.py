"""BPE (RoBERTa, GPT-2-style byte-level; also character BPE with an UNK or byte fallback).

A BPE file only loads when every merge's parts and result are in the vocabulary, so the kept set is closed
under "the merges that build a kept token" and the merges list keeps exactly the merges among kept tokens,
in their original order. Then, for every word whose final tokens are all kept, each merge the full model
applied is still present and no lower-ranked merge appeared, so the pruned model applies the same merges.

Byte-level BPE has no UNK: its 256 byte symbols are always kept, so any text still encodes.
"""

from __future__ import annotations

from typing import Callable, Iterable

from tokenizers import pre_tokenizers

from pema_export.errors import TokenizerError

# The 256 stand-in characters byte-level BPE uses for the bytes 0..255.
BYTE_LEVEL_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())
BYTE_FALLBACK_TOKENS = frozenset(f"<0x{b:02X}>" for b in range(256))


def prune_model(model: dict, id_map: dict[int, int]) -> dict:
    """The BPE ``model`` section with only kept tokens (renumbered by ``id_map``) and the merges among them."""
    vocab = {token: id_map[old] for token, old in model["vocab"].items() if old in id_map}
    merges = [merge for merge in model["merges"] if all(part in vocab for part in _merge_tokens(merge, model))]
    missing = sorted(token for token in _closure_tokens(model, vocab) if token not in vocab)
    if missing:
        # choose_kept_ids applies closure(); reaching this means a caller skipped it.
        raise TokenizerError(f"BPE token {missing[0]!r} is needed by a kept token's merges but was not kept")
    unk = model.get("unk_token")
    if unk is not None and unk not in vocab:
        raise TokenizerError(f"BPE unk token {unk!r} is not among the kept tokens")
    return {**model, "vocab": dict(sorted(vocab.items(), key=lambda item: item[1])), "merges": merges}


def required_ids(tokenizer_json: dict) -> set[int]:
    """Ids any text may need: the byte symbols of byte-level BPE, the <0xNN> tokens of byte-fallback BPE."""
    model, vocab = tokenizer_json["model"], tokenizer_json["model"]["vocab"]
    needed: set[str] = set()
    if is_byte_level(tokenizer_json):
        needed |= BYTE_LEVEL_ALPHABET
    if model.get("byte_fallback"):
        needed |= BYTE_FALLBACK_TOKENS
    return {vocab[token] for token in needed if token in vocab}


def fallback_ids(tokenizer_json: dict) -> set[int]:
    """Every single-character token and its continuation / end-of-word forms (``--oov fallback``)."""
    model = tokenizer_json["model"]
    prefix, suffix = model.get("continuing_subword_prefix") or "", model.get("end_of_word_suffix") or ""
    ids = set()
    for token, token_id in model["vocab"].items():
        core = token[len(prefix):] if prefix and token.startswith(prefix) else token
        core = core[: -len(suffix)] if suffix and core.endswith(suffix) else core
        if len(core) == 1:
            ids.add(token_id)
    return ids | required_ids(tokenizer_json)


def closure(model: dict) -> Callable[[Iterable[int]], set[int]]:
    """A function: ids -> ids plus, recursively, the parts of every merge that builds one of them."""
    vocab = model["vocab"]
    parts: dict[int, list[int]] = {}
    for merge in model["merges"]:
        left, right, result = _merge_tokens(merge, model)
        if not (left in vocab and right in vocab and result in vocab):
            raise TokenizerError(f"BPE merge {left!r} + {right!r} refers to a token outside the vocabulary")
        parts.setdefault(vocab[result], []).extend((vocab[left], vocab[right]))

    def close(ids: Iterable[int]) -> set[int]:
        closed = set(ids)
        pending = list(closed)
        while pending:
            for part in parts.get(pending.pop(), ()):
                if part not in closed:
                    closed.add(part)
                    pending.append(part)
        return closed

    return close


def is_byte_level(tokenizer_json: dict) -> bool:
    return _has_component(tokenizer_json.get("pre_tokenizer"), "ByteLevel") or _has_component(
        tokenizer_json.get("decoder"), "ByteLevel"
    )


def _merge_tokens(merge, model: dict) -> tuple[str, str, str]:
    """(left, right, result) of one merge, in either file format ("a b" or ["a", "b"])."""
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    prefix = model.get("continuing_subword_prefix") or ""
    # The continuation prefix of the right part is not repeated inside the merged token ("##l" + "##o" -> "##lo").
    tail = right[len(prefix):] if prefix and right.startswith(prefix) else right
    return left, right, left + tail


def _closure_tokens(model: dict, kept_vocab: dict[str, int]) -> set[str]:
    """Tokens the kept tokens' merges need."""
    needed = set()
    for merge in model["merges"]:
        left, right, result = _merge_tokens(merge, model)
        if result in kept_vocab:
            needed.update((left, right))
    return needed


def _has_component(component: dict | None, kind: str) -> bool:
    if not component:
        return False
    if component.get("type") == kind:
        return True
    children = component.get("pretokenizers") or component.get("decoders") or []
    return any(_has_component(child, kind) for child in children)

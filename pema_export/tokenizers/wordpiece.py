"""WordPiece (BERT, DistilBERT, MiniLM, ELECTRA).

Greedy longest-match over a subset vocabulary reproduces the original pieces for every word whose pieces
are all kept (a longer match would have been in the full vocabulary too); other words re-segment into kept
pieces or become UNK.
"""

from __future__ import annotations

from pema_export.errors import TokenizerError


def prune_model(model: dict, id_map: dict[int, int]) -> dict:
    """The WordPiece ``model`` section with only kept tokens, renumbered by ``id_map`` (old id -> new id)."""
    vocab = {token: id_map[old] for token, old in model["vocab"].items() if old in id_map}
    if model.get("unk_token") not in vocab:
        raise TokenizerError(f"WordPiece unk token {model.get('unk_token')!r} is not among the kept tokens")
    return {**model, "vocab": dict(sorted(vocab.items(), key=lambda item: item[1]))}


def required_ids(tokenizer_json: dict) -> set[int]:
    """Nothing beyond the specials: the UNK token (a special) covers any text."""
    return set()


def fallback_ids(tokenizer_json: dict) -> set[int]:
    """Every single-character token and its continuation form ("x", "##x") (``--oov fallback``)."""
    model = tokenizer_json["model"]
    prefix = model.get("continuing_subword_prefix") or "##"
    return {
        token_id
        for token, token_id in model["vocab"].items()
        if len(token) == 1 or (token.startswith(prefix) and len(token) == len(prefix) + 1)
    }

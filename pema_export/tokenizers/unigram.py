"""Unigram / SentencePiece in tokenizer.json (XLM-R, ALBERT, T5, mT5).

Pieces keep their scores and their relative order (ids are list positions). Viterbi over a subset of the
pieces picks the original segmentation for every text whose pieces were all kept: that path is still there
and every other path was available before, with no better score.

One subtlety: a character with no single-character piece becomes an UNK node scored ``min score - 10``,
where the minimum is over the whole vocabulary. Dropping the lowest-scored piece would raise that score and
could let an UNK path beat the original one, so the lowest-scored piece is always kept.
"""

from __future__ import annotations

from pema_export.errors import TokenizerError

METASPACE = "▁"  # SentencePiece's word-start marker, unless the file names another


def prune_model(model: dict, id_map: dict[int, int]) -> dict:
    """The Unigram ``model`` section with only kept pieces, renumbered by ``id_map`` (old id -> new id)."""
    pieces = []
    for old_id, piece in enumerate(model["vocab"]):
        if old_id not in id_map:
            continue
        if id_map[old_id] != len(pieces):
            # Ids are list positions, so a kept id that is not a piece cannot sit between two pieces.
            raise TokenizerError(f"Unigram piece {piece[0]!r} would move from id {id_map[old_id]} to {len(pieces)}")
        pieces.append(list(piece))
    unk_id = model.get("unk_id")
    if unk_id is not None and unk_id not in id_map:
        raise TokenizerError(f"Unigram unk piece (id {unk_id}) is not among the kept tokens")
    return {**model, "vocab": pieces, "unk_id": None if unk_id is None else id_map[unk_id]}


def required_ids(tokenizer_json: dict) -> set[int]:
    """The UNK piece, the lowest-scored piece (it fixes the UNK score), and <0xNN> pieces under byte fallback."""
    model = tokenizer_json["model"]
    pieces = model["vocab"]
    ids = set()
    if model.get("unk_id") is not None:
        ids.add(int(model["unk_id"]))
    if pieces:
        ids.add(min(range(len(pieces)), key=lambda i: (pieces[i][1], i)))
    if model.get("byte_fallback"):
        ids |= {i for i, (piece, _score) in enumerate(pieces) if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")}
    return ids


def fallback_ids(tokenizer_json: dict) -> set[int]:
    """Every single-character piece and its word-start form ("▁x") (``--oov fallback``)."""
    marker = _word_start_marker(tokenizer_json)
    ids = set()
    for i, (piece, _score) in enumerate(tokenizer_json["model"]["vocab"]):
        if len(piece) == 1 or (len(piece) == 2 and piece.startswith(marker)):
            ids.add(i)
    return ids | required_ids(tokenizer_json)


def _word_start_marker(tokenizer_json: dict) -> str:
    for section in ("pre_tokenizer", "decoder"):
        found = _find_replacement(tokenizer_json.get(section))
        if found:
            return found
    return METASPACE


def _find_replacement(component: dict | None) -> str | None:
    if not component:
        return None
    if component.get("type") == "Metaspace":
        return component.get("replacement") or METASPACE
    for child in component.get("pretokenizers") or component.get("decoders") or []:
        found = _find_replacement(child)
        if found:
            return found
    return None

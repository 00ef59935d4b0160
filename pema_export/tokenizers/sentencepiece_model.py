"""A pruned SentencePiece ``.model`` beside the pruned tokenizer.json, for runtimes that read SentencePiece files.

Pieces are kept by string: the ones the pruned tokenizer.json still has, in their original order, plus the
UNK piece. Ids in the two files then agree wherever they agreed before (ALBERT, T5: equal; XLM-R: the same
fairseq offset), because both lists are the same strings filtered the same way.
"""

from __future__ import annotations

from pathlib import Path

from pema_export.errors import TokenizerError


def prune_sentencepiece_files(folder: Path, tokenizer_json: dict, pruned_json: dict) -> dict[str, bytes]:
    """{file name: pruned bytes} for every SentencePiece ``*.model`` in ``folder`` of a Unigram tokenizer."""
    if tokenizer_json["model"].get("type") != "Unigram":
        return {}  # only Unigram .model files are rewritten; others are not shipped in the bundle
    kept_pieces = {piece for piece, _score in pruned_json["model"]["vocab"]}
    return {path.name: prune_sentencepiece_model(path.read_bytes(), kept_pieces, path.name) for path in sorted(folder.glob("*.model"))}


def prune_sentencepiece_model(data: bytes, kept_pieces: set[str], name: str = ".model") -> bytes:
    """The serialized ModelProto with only ``kept_pieces`` (and the UNK piece), checked to load."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:
        raise TokenizerError(f"{name} is not a SentencePiece model file") from None
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise TokenizerError(f"{name} is a SentencePiece {kind} model but tokenizer.json is Unigram; refusing to export")
    unknown = sentencepiece_model_pb2.ModelProto.SentencePiece.UNKNOWN
    new_ids: dict[int, int] = {}
    kept = []
    for old_id, piece in enumerate(proto.pieces):
        if piece.type == unknown or piece.piece in kept_pieces:
            new_ids[old_id] = len(kept)
            kept.append(piece)
    del proto.pieces[:]
    proto.pieces.extend(kept)
    spec = proto.trainer_spec
    for field in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old_id = getattr(spec, field)
        if old_id >= 0:  # -1 means "none"; a dropped piece becomes none too
            setattr(spec, field, new_ids.get(old_id, -1))
    # The self-test samples (field 4, unknown to this protobuf module) record the full model's segmentations,
    # which SentencePiece checks on load; they no longer hold after pruning.
    proto.DiscardUnknownFields()
    pruned = proto.SerializeToString(deterministic=True)
    try:
        sentencepiece.SentencePieceProcessor(model_proto=pruned)
    except Exception as exc:
        raise TokenizerError(f"the pruned {name} does not load in SentencePiece: {exc}") from None
    return pruned

"""``--oov remap``: keep only what the corpus uses, ship the original tokenizer, and run each dropped token as the
kept token whose pretrained embedding is closest.

``nearest_kept_table`` maps every original id to that token; ``prepend_id_remap`` puts the table in the graph in
front of everything that reads ``input_ids`` (one int32 per original id), as a stage of ``stages.ship``. Aliases in
tokenizer.json cannot do it instead: they do not survive a ``tokenizers`` save/load, nor work for BPE or Unigram.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from pema_export.errors import ModelError, VerificationError
from pema_export.oov import AppliedPolicy, OovDropout, OovPolicy, Refusal, checked_dropout_rate
from pema_export.tokenizers import original_tokenizer_json, tokenizer_json_text
from pema_export.vocab import special_token_ids

ID_MAP_NAME = "pema_id_map"
# The id table's two nodes (Gather, Cast) and names, besides its 4 bytes per original id.
ID_TABLE_GRAPH_BYTES = 300


class Remap(OovPolicy):
    name = "remap"
    manifest_key = "remap"
    # needs no ids beyond the family's: the original tokenizer ships, so no text has to encode with kept pieces alone
    ships_original_numbering = True

    def refusal(self, task) -> Refusal | None:
        if not task.vocabulary_logits:
            return None
        return Refusal(
            reason=f"{task.name} logits are over the kept rows",
            message=f"--oov remap cannot serve --task {task.name}: the logits are over the kept rows while a remap bundle's "
                    "tokenizer keeps the original ids, so predictions would decode to the wrong tokens; use --oov fallback or unk",
        )

    def tokenizer_bytes_predictor(self, tokenizer_json: dict) -> Callable[[object, int], int]:
        """The original tokenizer (measured once: it does not depend on the kept ids) and one id table per model file."""
        original = len(tokenizer_json_text(original_tokenizer_json(tokenizer_json)).encode("utf-8"))
        return lambda kept, model_files: original + model_files * (4 * kept.original_size + ID_TABLE_GRAPH_BYTES)

    def apply(self, source, kept, tokenizer_json: dict, log: Callable[[str], None]) -> "AppliedRemap":
        tables = nearest_kept_table(pretrained_embedding(source), kept, special_token_ids(tokenizer_json, source.read_config()))
        log(f"--oov remap: {tables.remapped_ids:,} dropped ids run as their nearest kept token")
        return AppliedRemap(self, tables, IdRemap(tables, kept))


@dataclass
class AppliedRemap(AppliedPolicy):
    tables: "RemapTables"
    id_table: "IdRemap"

    def dropout(self, rate: float, kept, unk_id: int | None) -> OovDropout | None:
        """Each piece of a dropped word runs as its nearest other kept token, as an unseen word does in the bundle."""
        if not rate:
            return None
        return OovDropout(checked_dropout_rate(rate), "nearest kept token", neighbour=self.tables.neighbour)

    def graph_stages(self) -> tuple:
        return (self.id_table,)

    def manifest_entry(self) -> dict:
        return self.id_table.as_manifest()


def pretrained_embedding(source) -> np.ndarray:
    """The model's pretrained input-embedding matrix (all rows), read from safetensors without building the model."""
    from pema_export.pema import find_safetensors

    config = source.read_config()
    rows = config.get("vocab_size")
    checkpoint = find_safetensors(source.path)
    if checkpoint is not None:
        candidates = sorted(
            name for name, shape in checkpoint.shapes.items()
            if len(shape) == 2 and shape[0] == rows and ("word_embeddings" in name or "embed_tokens" in name or "shared" in name)
        )
        if candidates:
            return checkpoint.read(candidates[0]).float().numpy()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source.path)
    embedding = model.get_input_embeddings()
    if embedding is None or embedding.weight.shape[0] != rows:
        raise ModelError(f"{source.name}: cannot find the input embedding for --oov remap")
    return embedding.weight.detach().float().numpy()


@dataclass(frozen=True)
class RemapTables:
    """``id_map[old]``: the new id an original id runs as (itself when kept, else the nearest kept token);
    ``neighbour[new]``: the nearest *other* kept token of a kept one (what --oov-dropout substitutes)."""

    id_map: np.ndarray  # int64, one per original id
    neighbour: np.ndarray  # int64, one per kept id
    remapped_ids: int  # original ids that run as another token


def nearest_kept_table(embedding: np.ndarray, kept, protected_ids: Iterable[int], chunk: int = 4096) -> RemapTables:
    """Cosine-nearest kept token for every original id. Special tokens are never a target (an unseen word must not
    read as [SEP] or padding); ties go to the lower id, so the table is deterministic."""
    embedding = np.asarray(embedding, dtype=np.float32)
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    protected = set(int(i) for i in protected_ids)
    candidates = np.array([int(i) for i in kept.kept_ids if int(i) not in protected and int(i) < len(unit)], dtype=np.int64)
    if len(candidates) < 2:
        raise ModelError("--oov remap needs at least two kept non-special tokens")
    new_of = kept.id_map
    id_map = new_of.copy()
    neighbour = np.arange(kept.size, dtype=np.int64)
    target = unit[candidates].T
    for start in range(0, len(unit), chunk):
        scores = unit[start : start + chunk] @ target
        rows = np.arange(start, min(start + chunk, len(unit)))
        # the second-best kept token, for kept rows: the row itself always scores best
        is_self = candidates[None, :] == rows[:, None]
        best = scores.argmax(axis=1)
        scores[is_self] = -np.inf
        other = scores.argmax(axis=1)
        dropped = new_of[rows] < 0
        id_map[rows[dropped]] = new_of[candidates[best[dropped]]]
        kept_rows = ~dropped
        neighbour[new_of[rows[kept_rows]]] = new_of[candidates[other[kept_rows]]]
    for special in protected:  # specials stand for themselves in training too
        if 0 <= special < len(new_of) and new_of[special] >= 0:
            neighbour[new_of[special]] = new_of[special]
    return RemapTables(id_map=id_map, neighbour=neighbour, remapped_ids=int(np.count_nonzero(new_of < 0)))


def prepend_id_remap(onnx_path: Path, id_map: np.ndarray) -> None:
    """Rewrite the graph so it takes original ids: input_ids -> Gather(id_map) -> Cast(int64) -> every old consumer.

    The table is int32 (4 bytes per original id); the Cast keeps every consumer's input type as exported."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    if "input_ids" not in {i.name for i in graph.input}:
        raise ModelError("the exported graph has no input_ids input to remap")
    remapped = "input_ids_pruned"
    for node in graph.node:
        node.input[:] = [remapped if name == "input_ids" else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(id_map.astype(np.int32), ID_MAP_NAME))
    nodes = [
        helper.make_node("Gather", [ID_MAP_NAME, "input_ids"], ["input_ids_pruned_int32"], name="pema_id_remap", axis=0),
        helper.make_node("Cast", ["input_ids_pruned_int32"], [remapped], name="pema_id_remap_cast", to=TensorProto.INT64),
    ]
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    onnx.save(model, str(onnx_path))


@dataclass
class IdRemap:
    """``--oov remap`` as a stage of ``stages.ship``: the table goes into every shipped model, checked exactly.

    ``apply`` prepends the table to a model file in place and checks the result against the model before the
    table: on the corpus sample's original ids it must answer exactly (0.0) as before on the pruned ids, since the
    table is a lookup. It returns the reference with original ids as its feeds, so the stages after it (ORT
    conversion) are checked on the ids the app will send."""

    tables: RemapTables
    kept: object  # vocab.KeptVocab
    models: list[str] = field(default_factory=list)
    texts_checked: int = 0

    def apply(self, model: Path, name: str, reference, work: Path):
        import shutil

        import onnxruntime as ort

        before = work / f"before-remap-{len(self.models)}.onnx"
        shutil.copyfile(model, before)
        prepend_id_remap(model, self.tables.id_map)
        original = self.original_ids(reference)
        sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (before, model)]
        inputs = [{i.name for i in session.get_inputs()} for session in sessions]
        for pruned_feed, original_feed, text in zip(reference.feeds, original.feeds, reference.texts):
            want = sessions[0].run(None, {k: v for k, v in pruned_feed.items() if k in inputs[0]})
            got = sessions[1].run(None, {k: v for k, v in original_feed.items() if k in inputs[1]})
            diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
            if diff > 0.0:
                raise VerificationError(f"--oov remap: {name} with the id table differs by {diff:.3g} on corpus text {text[:80]!r}")
        self.models.append(name)
        self.texts_checked = len(reference.texts)
        return original

    def original_ids(self, reference):
        """The same reference, its feeds in the original tokenizer's numbering (what a remap bundle's app sends)."""
        feeds = [{**feed, "input_ids": self.kept.kept_ids[feed["input_ids"]]} for feed in reference.feeds]
        return replace(reference, feeds=feeds)

    def as_manifest(self) -> dict:
        return {"table": ID_MAP_NAME, "table_bytes": 4 * len(self.tables.id_map), "remapped_ids": self.tables.remapped_ids,
                "models": sorted(self.models), "texts_checked": self.texts_checked}


POLICY = Remap()

"""``--oov remap``: keep only what the corpus uses, ship the original tokenizer, and run each dropped token as the
kept token whose pretrained embedding is closest.

``nearest_kept_table`` maps every original id to that token; the policy's graph stage (stages/id_table.py) puts
the table in front of everything that reads ``input_ids`` (one int32 per original id). Aliases in tokenizer.json
cannot do it instead: they do not survive a ``tokenizers`` save/load, nor work for BPE or Unigram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from pema_export.errors import ModelError
from pema_export.pema import pretrained_rows
from pema_export.oov import AppliedPolicy, OovDropout, OovPolicy, PolicyBytes, Refusal, checked_dropout_rate
from pema_export.stages import id_table
from pema_export.tokenizers import original_tokenizer_json, tokenizer_json_text
from pema_export.vocab import special_token_ids


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

    def bytes_predictor(self, tokenizer_json: dict) -> Callable[[object, list], PolicyBytes]:
        """The original tokenizer (measured once: it does not depend on the kept ids) and one id table per model
        file, all counted as tokenizer bytes, as the scan has always reported them."""
        original = len(tokenizer_json_text(original_tokenizer_json(tokenizer_json)).encode("utf-8"))
        return lambda kept, graphs: PolicyBytes(original + len(graphs) * (4 * kept.original_size + id_table.GRAPH_BYTES))

    def apply(self, source, kept, tokenizer_json: dict, log: Callable[[str], None]) -> "AppliedRemap":
        tables = nearest_kept_table(pretrained_embedding(source), kept, special_token_ids(tokenizer_json, source.read_config()))
        log(f"--oov remap: {tables.remapped_ids:,} dropped ids run as their nearest kept token")
        return AppliedRemap(self, tables, id_table.IdTable(tables.id_map, kept.kept_ids, tables.remapped_ids))


@dataclass
class AppliedRemap(AppliedPolicy):
    tables: "RemapTables"
    table_stage: id_table.IdTable

    def dropout(self, rate: float, kept, unk_id: int | None) -> OovDropout | None:
        """Each piece of a dropped word runs as its nearest other kept token, as an unseen word does in the bundle."""
        if not rate:
            return None
        return OovDropout(checked_dropout_rate(rate), "nearest kept token", neighbour=self.tables.neighbour)

    def graph_stages(self) -> tuple:
        return (self.table_stage,)

    def manifest_entry(self) -> dict:
        return self.table_stage.as_manifest()


def pretrained_embedding(source) -> np.ndarray:
    """The model's pretrained input-embedding matrix (all rows)."""
    read_rows, rows = pretrained_rows(source)
    return read_rows(np.arange(rows))


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


POLICY = Remap()

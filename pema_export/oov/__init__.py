"""Text the corpus never had: one module per ``--oov`` policy behind one interface, and the registry.

- ``fallback``: keep every single-character piece and its continuation form, so an unseen word degrades to known
  characters (UNK only for characters the full vocabulary lacks too);
- ``unk``: keep only what the corpus uses; an unseen word re-segments into kept pieces or becomes UNK;
- ``remap``: keep only what the corpus uses, ship the original tokenizer, and run each dropped token as the kept
  token whose pretrained embedding is closest (an id table in the graph);
- ``tail``: keep exact rows for what the corpus uses, ship the original tokenizer, and ship every other row as a
  compact code of its pretrained value, decoded in the graph (a compressed tail);
- ``auto`` (auto.py) is no policy but the default choice between them, per corpus, model and target.
Byte-level BPE keeps its 256 byte symbols under every policy: it has no UNK, and every text must still encode.
prior.py (``--prior-words``) and heldout.py (the ``--eval`` figures) serve every policy.

A policy is configured for an export (``configure``: the embedding's width, whether the model is fine-tuned, its
own options) and answers for the whole export: the ids it needs kept (``policy_ids``), the tasks it cannot serve
(``refusal``), whether the bundle's tokenizer.json and config.json keep the original numbering
(``ships_original_numbering``; the graph then takes original ids), the bytes it ships instead of the pruned
tokenizer or adds to the model files (``bytes_predictor``, for the scan and ``--max-bytes``), the held-out id handling (``heldout_ids``) and
its manifest key. Once the kept ids are chosen, ``apply`` gives the policy as it runs in this export
(``AppliedPolicy``): the substitute ``--oov-dropout`` trains with, a transformation of the trained model before
export (the model the graph and the parity check are built from), the texts the parity check must add to reach
what the policy adds (``parity_texts``), graph stages (stages.Stage) and its manifest entry. A new policy is one module here and one line in ``POLICIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pema_export.errors import CorpusError, TokenizerError
from pema_export.tokenizers import family_module


@dataclass(frozen=True)
class OovDropout:
    """``--oov-dropout``: during training, each corpus word is replaced with probability ``rate`` by what an unseen
    word becomes in the bundle, so the model learns to read around missing words."""

    rate: float
    substitute_name: str  # "nearest kept token" or "UNK"
    neighbour: np.ndarray | None = None
    unk_new_id: int | None = None

    def substitute(self, word_ids: list[int]) -> list[int]:
        if self.neighbour is not None:
            return [int(self.neighbour[i]) for i in word_ids]
        return [self.unk_new_id]


@dataclass(frozen=True)
class PolicyBytes:
    """What a policy adds to a predicted bundle (scan, --max-bytes, --oov auto)."""

    tokenizer: int | None  # what ships instead of the pruned tokenizer; None: the pruned tokenizer (the scan measures it)
    model: int = 0  # bytes it adds to the model files, all of them together
    metadata: int = 0  # bytes its manifest entry adds


@dataclass(frozen=True)
class PolicySettings:
    """What a policy may read of the export beyond the kept ids (``OovPolicy.configure``)."""

    embedding_dim: int  # the width of the input embedding's rows
    trains: bool  # the export fine-tunes the model; otherwise it ships as pretrained
    tail_row_bytes: int | None = None  # --tail-row-bytes
    seed: int = 0
    precision: str = "none"  # the number format of the bundle's model files: "none" (fp32), "fp16" or "int8"


@dataclass(frozen=True)
class Refusal:
    """Why a policy cannot serve a task: ``reason`` in a line (--oov auto records it), ``message`` for the user who
    asked for the policy by name."""

    reason: str
    message: str


def checked_dropout_rate(rate: float) -> float:
    if not 0 < rate < 1:
        raise CorpusError(f"--oov-dropout {rate} must be between 0 and 1")
    return rate


class OovPolicy:
    """The interface; the defaults are a policy that prunes the tokenizer and adds nothing to the graph."""

    name = ""
    manifest_key: str | None = None  # its entry in the manifest's vocab section (null when another policy ran)
    ships_original_numbering = False  # tokenizer.json and config.json keep the original ids; the graph takes them

    def policy_ids(self, tokenizer_json: dict) -> set[int]:
        """Ids kept whatever the corpus says: what the family needs for any text to encode (byte-level BPE's byte
        symbols, Unigram's lowest-scored piece)."""
        return family_module(tokenizer_json).required_ids(tokenizer_json)

    def configure(self, settings: PolicySettings) -> "OovPolicy":
        """The policy as it runs in one export; most read nothing from the settings."""
        return self

    def refusal(self, task) -> Refusal | None:
        """Why the policy cannot serve ``task`` (tasks.Task), or None."""
        return None

    def bytes_predictor(self, tokenizer_json: dict) -> Callable[[object, list], PolicyBytes] | None:
        """(kept, the shipped model files as stages.GraphEstimate) -> the bytes the policy adds; None: nothing but
        the pruned tokenizer."""
        return None

    def heldout_ids(self, kept, unk_id: int | None) -> tuple[int | None, np.ndarray | None]:
        """The UNK id in the shipped tokenizer's numbering, and (original numbering only) a mask of the original
        ids that run as another token."""
        if self.ships_original_numbering:
            return unk_id, kept.id_map < 0
        return (None if unk_id is None else kept.new_id(unk_id)), None

    def apply(self, source, kept, tokenizer_json: dict, log: Callable[[str], None]) -> "AppliedPolicy":
        """The policy for this export, once the kept ids are chosen (``source``: models.ModelSource)."""
        return AppliedPolicy(self)


@dataclass
class AppliedPolicy:
    """A policy as it runs in one export; the defaults add nothing."""

    policy: OovPolicy

    def dropout(self, rate: float, kept, unk_id: int | None) -> OovDropout | None:
        """What an unseen word becomes, for ``--oov-dropout``: UNK (what a word with no kept segmentation becomes;
        under fallback most unseen words re-segment instead)."""
        if not rate:
            return None
        checked_dropout_rate(rate)
        if unk_id is None:
            raise TokenizerError("--oov-dropout needs an UNK token to substitute (this tokenizer has none); use --oov remap")
        return OovDropout(rate, "UNK", unk_new_id=kept.new_id(unk_id))

    def transform_model(self, model):
        """The trained model as the graph is exported from it, and as the parity check's reference runs it."""
        return model

    def parity_tokenizer(self, pruned, shipped_path):
        """The tokenizer whose ids the exported graph takes, for the parity check and the stages' reference:
        ``pruned`` (a tokenizers.Tokenizer), unless ``transform_model`` made the model take the original ids of the
        shipped tokenizer (at ``shipped_path``)."""
        return pruned

    def parity_texts(self, seed: int) -> list[str]:
        """Texts beyond the corpus sample that the parity check must run: inputs that reach what the policy adds to
        the model (the corpus's own texts never do)."""
        return []

    def record_parity(self, texts_checked: int, max_abs_diff: float) -> None:
        """The parity check's figures on ``parity_texts``, for the policy's manifest entry."""

    def graph_stages(self) -> tuple:
        """stages.Stage instances this policy adds to the target's stages."""
        return ()

    def manifest_entry(self) -> dict | None:
        return None


def manifest_entries(applied: AppliedPolicy) -> dict[str, dict | None]:
    """Every registered policy's manifest key: the applied policy's entry under its own, null under the others'."""
    return {policy.manifest_key: applied.manifest_entry() if policy.name == applied.policy.name else None
            for policy in POLICIES.values() if policy.manifest_key}


# Imported after the interface they subclass.
from pema_export.oov import auto, fallback, remap, tail, unk  # noqa: E402

POLICIES: dict[str, OovPolicy] = {policy.name: policy for policy in (fallback.POLICY, unk.POLICY, remap.POLICY, tail.POLICY)}
# what --oov takes: a policy, or "auto", which scan.scan_vocabulary resolves to one for the model and target
CHOICES = (auto.NAME, *POLICIES)
DEFAULT = auto.NAME  # the evidence: docs/oov.md, benchmarks/oov_accuracy.py


def get_policy(name: str, settings: PolicySettings | None = None) -> OovPolicy:
    """The policy ``name``, configured for an export when ``settings`` are given."""
    try:
        policy = POLICIES[name]
    except KeyError:
        raise TokenizerError(f"--oov {name!r} is not a policy (choose from: {', '.join(POLICIES)})") from None
    return policy.configure(settings) if settings is not None else policy

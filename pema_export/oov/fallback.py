"""``--oov fallback``: keep every single-character piece and its continuation form, so an unseen word degrades to
known characters (UNK only for characters the full vocabulary lacks too)."""

from __future__ import annotations

from pema_export.oov import OovPolicy
from pema_export.tokenizers import family_module


class Fallback(OovPolicy):
    name = "fallback"

    def policy_ids(self, tokenizer_json: dict) -> set[int]:
        return family_module(tokenizer_json).fallback_ids(tokenizer_json)


POLICY = Fallback()

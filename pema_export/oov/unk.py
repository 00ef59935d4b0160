"""``--oov unk``: keep only what the corpus uses (and what the family needs for any text to encode); an unseen
word re-segments into kept pieces or becomes UNK. The interface's defaults are exactly this policy."""

from __future__ import annotations

from pema_export.oov import OovPolicy


class Unk(OovPolicy):
    name = "unk"


POLICY = Unk()

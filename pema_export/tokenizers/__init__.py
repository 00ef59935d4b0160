"""Rewrite a tokenizer.json so its vocabulary is exactly the kept tokens, numbered 0..k-1 in kept order.

One module per tokenizer family (wordpiece, bpe, unigram) prunes the ``model`` section and says which ids the
family needs kept (``required_ids``: always; ``fallback_ids``: under ``--oov fallback``; ``closure``: BPE's
merge parts). This module remaps every other id-bearing field (added_tokens, post_processor) and drops fixed
padding/truncation baked into the source file.
"""

from __future__ import annotations

import copy
import json
from types import ModuleType
from typing import Callable, Iterable

import numpy as np

from pema_export.errors import TokenizerError
from pema_export.tokenizers import bpe, unigram, wordpiece
from pema_export.vocab import open_tokenizer

FAMILIES: dict[str, ModuleType] = {"WordPiece": wordpiece, "BPE": bpe, "Unigram": unigram}


def tokenizer_family(tokenizer_json: dict) -> str:
    return tokenizer_json.get("model", {}).get("type", "unknown")


def check_supported(tokenizer_json: dict) -> str:
    """The family name, or TokenizerError if we cannot prune it correctly."""
    family = tokenizer_family(tokenizer_json)
    if family not in FAMILIES:
        raise TokenizerError(
            f"tokenizer family {family} is not supported (supported: {', '.join(sorted(FAMILIES))}); refusing to export"
        )
    return family


def family_module(tokenizer_json: dict) -> ModuleType:
    return FAMILIES[check_supported(tokenizer_json)]


def token_closure(tokenizer_json: dict) -> Callable[[Iterable[int]], set[int]]:
    """ids -> the ids a pruned file needs to keep them (BPE: the parts of their merges; others: themselves)."""
    module = family_module(tokenizer_json)
    if hasattr(module, "closure"):
        return module.closure(tokenizer_json["model"])
    return set


def prune_tokenizer(tokenizer_json: dict, kept_ids: np.ndarray) -> dict:
    """A new tokenizer.json dict whose ids are the positions of ``kept_ids``; the input is not modified."""
    family = check_supported(tokenizer_json)
    id_map = {int(old): new for new, old in enumerate(kept_ids)}
    pruned = copy.deepcopy(tokenizer_json)
    pruned["model"] = FAMILIES[family].prune_model(tokenizer_json["model"], id_map)
    pruned["added_tokens"] = [_remap_added(token, id_map) for token in tokenizer_json.get("added_tokens", [])]
    if pruned.get("post_processor"):
        pruned["post_processor"] = _remap_post_processor(pruned["post_processor"], id_map)
    # The source may bake in fixed-length padding/truncation (all-MiniLM: Fixed 128). Runtimes disagree on
    # honouring it (transformers.js ignores it), so the bundle ships none: the app pads as its runtime needs.
    pruned["padding"] = None
    pruned["truncation"] = None
    return pruned


def original_tokenizer_json(tokenizer_json: dict) -> dict:
    """The tokenizer of a bundle that keeps the original numbering: every id as it was, only the baked-in
    padding/truncation removed."""
    vocab_ids = sorted(open_tokenizer(tokenizer_json).get_vocab(with_added_tokens=True).values())
    return prune_tokenizer(tokenizer_json, np.asarray(vocab_ids, dtype=np.int64))


def tokenizer_json_text(data: dict) -> str:
    """The one way a tokenizer.json is serialized, so predicted and written bytes agree. Compact: it ships to phones
    and browsers, and indentation was a third of all-MiniLM-L6-v2's original tokenizer.json (711,396 -> 466,081
    bytes); tokenizers and transformers.js read either form the same."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _new_id(id_map: dict[int, int], old_id: int, what: str) -> int:
    try:
        return id_map[int(old_id)]
    except KeyError:
        raise TokenizerError(f"{what} (id {old_id}) is not among the kept tokens") from None


def _remap_added(token: dict, id_map: dict[int, int]) -> dict:
    return {**token, "id": _new_id(id_map, token["id"], f"added token {token['content']!r}")}


def _remap_post_processor(processor: dict, id_map: dict[int, int]) -> dict:
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for name, special in processor.get("special_tokens", {}).items():
            special["ids"] = [_new_id(id_map, i, f"post-processor token {name!r}") for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for field in ("sep", "cls"):
            token, old_id = processor[field]
            processor[field] = [token, _new_id(id_map, old_id, f"post-processor token {token!r}")]
    elif kind == "Sequence":
        processor["processors"] = [_remap_post_processor(p, id_map) for p in processor["processors"]]
    elif kind not in ("ByteLevel",):
        raise TokenizerError(f"post-processor {kind} is not supported; refusing to export")
    return processor


def pruned_tokenizer_config(tokenizer_config: dict, id_map: dict[int, int], max_length: int | None) -> dict:
    """tokenizer_config.json for the pruned vocabulary: its ``added_tokens_decoder`` ids renumbered."""
    config = copy.deepcopy(tokenizer_config)
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {
            str(_new_id(id_map, int(old), f"added token {entry.get('content')!r}")): entry for old, entry in decoder.items()
        }
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    if max_length is not None:
        config["model_max_length"] = max_length
    return config

import json

import numpy as np

from pema_export.tokenizers import prune_tokenizer
from pema_export.vocab import (
    choose_kept_ids,
    count_tokens,
    open_tokenizer,
    read_keep_tokens,
    special_token_ids,
    unk_token_id,
)

TEXTS = ["where is my order", "refund my order please", "where is the courier"]


def test_counts_include_special_tokens_and_every_used_id(wordpiece_tokenizer):
    tokenizer = open_tokenizer(json.loads(wordpiece_tokenizer.to_str()))
    counts = count_tokens(tokenizer, iter(TEXTS), batch_size=2)
    assert counts.texts == 3
    expected = np.zeros_like(counts.counts)
    for text in TEXTS:
        for token_id in tokenizer.encode(text).ids:
            expected[token_id] += 1
    assert (counts.counts == expected).all()
    assert counts.counts[tokenizer.token_to_id("[CLS]")] == 3


def test_kept_ids_are_used_plus_specials_in_original_order(wordpiece_tokenizer):
    data = json.loads(wordpiece_tokenizer.to_str())
    tokenizer = open_tokenizer(data)
    counts = count_tokens(tokenizer, TEXTS)
    specials = special_token_ids(data, {"pad_token_id": 0})
    kept = choose_kept_ids(counts, specials, unk_id=unk_token_id(data))
    assert list(kept.kept_ids) == sorted(set(np.flatnonzero(counts.counts)) | specials)
    assert {tokenizer.token_to_id(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]} <= set(kept.kept_ids)
    assert kept.size < tokenizer.get_vocab_size()
    assert [kept.id_map[i] for i in kept.kept_ids] == list(range(kept.size))


def test_min_count_drops_rare_tokens_but_never_specials(wordpiece_tokenizer):
    data = json.loads(wordpiece_tokenizer.to_str())
    tokenizer = open_tokenizer(data)
    counts = count_tokens(tokenizer, TEXTS)
    kept = choose_kept_ids(counts, special_token_ids(data, {}), unk_id=unk_token_id(data), min_count=2)
    assert tokenizer.token_to_id("where") in kept.kept_ids
    assert tokenizer.token_to_id("refund") not in kept.kept_ids
    assert tokenizer.token_to_id("[MASK]") in kept.kept_ids


def test_keep_tokens_file_takes_tokens_and_texts(tmp_path, wordpiece_tokenizer):
    tokenizer = open_tokenizer(json.loads(wordpiece_tokenizer.to_str()))
    keep = tmp_path / "keep.txt"
    keep.write_text("##s\nsubscription cancelled\n", encoding="utf-8")
    ids = read_keep_tokens(keep, tokenizer)
    assert tokenizer.token_to_id("##s") in ids
    assert set(tokenizer.encode("subscription cancelled", add_special_tokens=False).ids) <= ids


def test_pruned_wordpiece_gives_the_mapped_original_ids(wordpiece_tokenizer):
    data = json.loads(wordpiece_tokenizer.to_str())
    data["padding"] = {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    tokenizer = open_tokenizer(data)
    kept = choose_kept_ids(count_tokens(tokenizer, TEXTS), special_token_ids(data, {}), unk_id=unk_token_id(data))
    pruned_json = prune_tokenizer(data, kept.kept_ids)
    assert pruned_json["padding"] is None and pruned_json["truncation"] is None
    assert len(pruned_json["model"]["vocab"]) == kept.size
    assert sorted(pruned_json["model"]["vocab"].values()) == list(range(kept.size))
    pruned = open_tokenizer(pruned_json)
    for text in TEXTS:
        assert pruned.encode(text).ids == kept.id_map[tokenizer.encode(text).ids].tolist()
    # a word the corpus never had becomes known pieces or [UNK], never an out-of-range id
    unseen = pruned.encode("zebra xylophone").ids
    assert all(0 <= i < kept.size for i in unseen)
    assert pruned.token_to_id("[UNK]") == kept.id_map[tokenizer.token_to_id("[UNK]")]
    special = pruned_json["post_processor"]["special_tokens"]
    assert special["[CLS]"]["ids"] == [pruned.token_to_id("[CLS]")]

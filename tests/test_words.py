"""Counting and checking a corpus word by word gives exactly what encoding every text whole gives, on every family.

The rule (pema_export.words) is checked where it could break: double and edge spaces, tabs and other whitespace,
characters a normalizer turns into spaces or removes, combining marks after a space, added tokens in the text,
contractions, CJK, very long words.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers

from conftest import TRAINING_TEXT
from pema_export import words
from pema_export.errors import VerificationError
from pema_export.oov import POLICIES
from pema_export.tokenizers import prune_tokenizer, token_closure
from pema_export.verify import _check_whole, check_tokenization
from pema_export.vocab import _count_whole, choose_kept_ids, count_tokens, open_tokenizer, special_token_ids, unk_token_id
from pema_export.words import word_split

PIECES = [
    "refund", "Order", "the", "can't", "it's", "I'M", "42", "#1234", "e-mail", "café", "naïve", "中文", "東京", "😀",
    " ", " ", " ", "  ", "\t", "\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2028", "\u3000", "\u200b",
    "\x00", "\x01", "\ufffd", "\u00a8", "\u00b4", "\u0301", "\u0308", "İ", "ß", "ﬁ", "Ａ", "½", "``", "''", "▁", "Ġ",
    "[MASK]", "[mask]", "[SEP]", "<mask>", "<s>", "</s>", "[CLS]", "x" * 120, ".", ",", "!", "'", "'s", "'ll", "$",
    # graphemes that could reach across a space: a prepended mark, joiners, a spacing mark, emoji modifiers and flags
    "\u0600", "\u200d", "\u200c", "\u093f", "कि", "\U0001f3fb", "👍🏻", "🇩🇪", "\U0001f1e9", "\u1100\u1161", "ᄀ",
    "ΑΣ", "σ", "Ω", "ﷺ", "\u0e33", "ไทย", "العربية", "ℌ", "①", "\u2581x", "\u3099", "ｶﾞ", "\uff9e",
]
WORD_PIECES = [piece for piece in PIECES if piece and not any(ch.isspace() for ch in piece)]
TEXTS = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=0, max_size=14).map("".join),  # any whitespace, anywhere
    # texts the plain-text rules take (single spaces between words), so that the word path itself is what runs
    st.lists(st.lists(st.sampled_from(WORD_PIECES), min_size=1, max_size=3).map("".join), min_size=1, max_size=6).map(" ".join),
)
NASTY = [
    "refund my order", "refund  my order", " refund my order", "refund my order ", "refund\tmy order",
    "it's the [MASK] order", "it's the <mask> order", "café \u0301naïve", "ask \u00a8 me", "東京 refund",
    "x" * 130 + " tail", "I'll pay $42.50, thanks!", "I'M 42", "e-mail\u3000me", "ﬁx it", "½ off", "new\nline",
    "refund\x1cmy order", "zero\u200bwidth", "``quoted''", "a" * 3,
]


@pytest.fixture(scope="session", params=["wordpiece_tokenizer", "bpe_tokenizer", "unigram_tokenizer", "albert", "xlmr", "minilm"])
def family(request, tmp_path_factory) -> Tokenizer:
    """Each tokenizer family as it ships: trained here on the samples, or converted by transformers, or MiniLM's."""
    if request.param == "albert":
        from conftest import train_albert_sentencepiece

        path = train_albert_sentencepiece(tmp_path_factory.mktemp("albert")) / "tokenizer.json"
    elif request.param == "xlmr":
        from conftest import train_sentencepiece_xlmr

        path = train_sentencepiece_xlmr(tmp_path_factory.mktemp("xlmr")) / "tokenizer.json"
    elif request.param == "minilm":
        from pema_export.models import resolve_model

        path = resolve_model(None).tokenizer_json
    else:
        return open_tokenizer(json.loads(request.getfixturevalue(request.param).to_str()))
    return open_tokenizer(path)


def keep(data: dict, corpus: list[str], min_count: int = 1):
    """The pipeline's kept ids for ``corpus`` under --oov unk."""
    return choose_kept_ids(count_tokens(open_tokenizer(data), corpus), special_token_ids(data, {}), unk_id=unk_token_id(data),
                           original_size=open_tokenizer(data).get_vocab_size(with_added_tokens=True),
                           policy_ids=POLICIES["unk"].policy_ids(data), closure=token_closure(data), min_count=min_count)


def concatenated(tokenizer: Tokenizer, pieces: list[str]) -> list[int]:
    return [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False).ids]


def test_each_family_has_the_rule_its_pre_tokenizer_allows(family):
    data = json.loads(family.to_str())
    expected = {"BertPreTokenizer": "whitespace", "ByteLevel": "byte-level", "Metaspace": "metaspace"}
    assert word_split(family).rule == expected[data["pre_tokenizer"]["type"]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_a_text_that_splits_has_exactly_the_ids_of_its_words(family, text):
    split = word_split(family)
    pieces = split.words(text)
    if pieces is not None:
        assert concatenated(family, pieces) == family.encode(text, add_special_tokens=False).ids, (split.rule, pieces)


def test_texts_the_rule_cannot_vouch_for_are_encoded_whole(family):
    split = word_split(family)
    added = [token for token in json.loads(family.to_str())["added_tokens"]]
    for token in added:
        assert split.words(f"say {token['content']} now") is None
    if split.rule != "whitespace":
        for text in ("two  spaces", " leading", "trailing ", "a\ttab"):
            assert split.words(text) is None
    if split.rule == "metaspace":  # a word that is not its own graphemes, or starts with the replacement
        for text in ("ask \u0301me", "ask \u200dme", "ask \u2581me", "ask\u0600 me"):
            assert split.words(text) is None, text
        assert split.words("Straße café naïve 東京") is not None  # but other text of any script splits
    assert split.words("refund my order") is not None
    for text in NASTY:  # and whatever splits is still exact
        pieces = split.words(text)
        if pieces is not None:
            assert concatenated(family, pieces) == family.encode(text, add_special_tokens=False).ids, (split.rule, text)


def test_counts_equal_whole_text_encoding_with_the_special_ids(family, monkeypatch):
    corpus = NASTY + list(TRAINING_TEXT)[:300]
    vocab_size = family.get_vocab_size(with_added_tokens=True)
    expected, texts = _count_whole(family, iter(corpus), vocab_size, 64)
    assert np.array_equal(count_tokens(family, iter(corpus)).counts, expected)
    monkeypatch.setattr(words, "MAX_DISTINCT_WORDS", 7)  # flushed many times: still the same counts
    monkeypatch.setattr(words, "BATCH_TEXTS", 5)
    counts = count_tokens(family, iter(corpus))
    assert np.array_equal(counts.counts, expected) and counts.texts == texts == len(corpus)


@pytest.mark.parametrize("min_count", [1, 3])
def test_fidelity_by_words_reports_what_whole_texts_report(family, min_count, monkeypatch):
    data = json.loads(family.to_str())
    corpus = NASTY + list(TRAINING_TEXT)[:300]
    kept = keep(data, corpus, min_count=min_count)
    pruned = open_tokenizer(prune_tokenizer(data, kept.kept_ids))
    expected = _check_whole(family, pruned, kept.id_map, corpus, lambda: False)
    report = check_tokenization(family, pruned, kept, iter(corpus))
    assert (report.texts_checked, report.texts_with_dropped_tokens) == expected
    if min_count > 1:
        assert expected[1] > 0  # the case is exercised: some texts lost a token
    monkeypatch.setattr(words, "MAX_DISTINCT_WORDS", 7)
    monkeypatch.setattr(words, "BATCH_TEXTS", 5)
    report = check_tokenization(family, pruned, kept, iter(corpus))
    assert (report.texts_checked, report.texts_with_dropped_tokens) == expected


def test_fidelity_by_words_still_names_a_text_the_pruned_tokenizer_splits_differently(wordpiece_tokenizer):
    data = json.loads(wordpiece_tokenizer.to_str())
    corpus = ["refund my order please", "where is my order"]
    kept = keep(data, corpus)
    pruned_json = prune_tokenizer(data, kept.kept_ids)
    vocab = pruned_json["model"]["vocab"]
    order = next(token for token in vocab if token == "order" or token.startswith("order"))
    vocab["mangled"], vocab[order] = vocab[order], -1  # "order" now encodes as something else
    del vocab[order]
    pruned = open_tokenizer(pruned_json)
    assert word_split(pruned) is not None  # the word path is the one that runs
    with pytest.raises(VerificationError, match="refund my order please"):
        check_tokenization(open_tokenizer(data), pruned, kept, iter(corpus))


def test_tokenizers_outside_the_rules_are_encoded_whole(wordpiece_tokenizer):
    data = json.loads(wordpiece_tokenizer.to_str())
    truncating = open_tokenizer(data)
    truncating.enable_truncation(8)
    assert word_split(truncating) is None
    replacing = open_tokenizer(data)
    replacing.normalizer = normalizers.Sequence([normalizers.Replace(" ", "_"), normalizers.Lowercase()])
    assert word_split(replacing) is None
    custom = open_tokenizer(data)
    custom.pre_tokenizer = pre_tokenizers.Split("e", "isolated")
    assert word_split(custom) is None
    # and counting still works, whole
    corpus = ["refund my order", "where is it"]
    expected, _ = _count_whole(replacing, iter(corpus), replacing.get_vocab_size(with_added_tokens=True), 64)
    assert np.array_equal(count_tokens(replacing, corpus).counts, expected)

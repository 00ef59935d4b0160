"""Vocabulary rewrite for every tokenizer family: fidelity on the corpus, loadable files, OOV policy, caps, refusals.

Tokenizers are trained here on the samples (conftest); no network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from conftest import TRAINING_TEXT
from pema_export.errors import TokenizerError
from pema_export.oov import POLICIES
from pema_export.pema import remap_config_ids
from pema_export.tokenizers import check_supported, prune_tokenizer, token_closure
from pema_export.tokenizers.bpe import BYTE_LEVEL_ALPHABET
from pema_export.tokenizers.sentencepiece_model import prune_sentencepiece_files
from pema_export.vocab import (
    KeptVocab,
    choose_kept_ids,
    count_tokens,
    open_tokenizer,
    read_keep_tokens,
    special_token_ids,
    unk_token_id,
)

FAMILIES = ["wordpiece_tokenizer", "bpe_tokenizer", "unigram_tokenizer", "albert_tokenizer"]


@pytest.fixture(scope="session")
def albert_tokenizer(albert_tokenizer_folder) -> Tokenizer:
    return Tokenizer.from_file(str(albert_tokenizer_folder / "tokenizer.json"))


def as_json(tokenizer: Tokenizer) -> dict:
    return json.loads(tokenizer.to_str())


def keep_for(tokenizer_json: dict, corpus: list[str], oov: str = "unk", **options) -> KeptVocab:
    """The pipeline's choice of kept ids for ``corpus`` (no config.json)."""
    original = open_tokenizer(tokenizer_json)
    return choose_kept_ids(
        count_tokens(original, corpus),
        special_token_ids(tokenizer_json, {}),
        unk_id=unk_token_id(tokenizer_json),
        original_size=original.get_vocab_size(with_added_tokens=True),
        policy_ids=POLICIES[oov].policy_ids(tokenizer_json),
        closure=token_closure(tokenizer_json),
        **options,
    )


def pruned_for(tokenizer_json: dict, corpus: list[str], oov: str = "unk", **options) -> tuple[Tokenizer, KeptVocab, dict]:
    kept = keep_for(tokenizer_json, corpus, oov, **options)
    pruned_json = prune_tokenizer(tokenizer_json, kept.kept_ids)
    return open_tokenizer(pruned_json), kept, pruned_json


def mapped(kept: KeptVocab, ids: list[int]) -> list[int]:
    return kept.id_map[np.asarray(ids, dtype=np.int64)].tolist()


def special_strings(tokenizer_json: dict) -> list[str]:
    return [token["content"] for token in tokenizer_json.get("added_tokens", [])]


SAMPLE_WORDS = sorted({word for text in TRAINING_TEXT for word in text.split()})
FIXED_TEXTS = [
    "",
    "   ",
    "café crème brûlée jalapeño ¿dónde está?",
    "日本語のテキスト 中文 한국어",
    "😀👍🏽🍕 🇫🇷 order 👩‍👩‍👧",
    "a" * 300,
    "Supercalifragilisticexpialidociousnessesque-ly",
    "ÀÉÎÕÜ ñ ß ﬁ Ⅻ ①",
    "order #80013 for $12.50 — refund?!",
    "\t\ttabs\nand\nnewlines\n",
]
# Random corpora: arbitrary unicode, sample words (with special-token strings mixed in), long words, fixed hard cases.
TEXTS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
    st.lists(st.sampled_from(SAMPLE_WORDS + ["<mask>", "[MASK]", "<s>", "[SEP]"]), max_size=12).map(" ".join),
    st.text(st.sampled_from("abcdeéñ日😀"), min_size=40, max_size=160),
    st.sampled_from(FIXED_TEXTS),
)
CORPORA = st.lists(TEXTS, min_size=1, max_size=8)
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY_SETTINGS
@given(corpus=CORPORA, oov=st.sampled_from(list(POLICIES)))
def test_pruned_ids_equal_original_ids_mapped_on_every_corpus_text(request, family, corpus, oov):
    tokenizer_json = as_json(request.getfixturevalue(family))
    original = open_tokenizer(tokenizer_json)
    pruned, kept, pruned_json = pruned_for(tokenizer_json, corpus, oov)

    for text in corpus:
        assert pruned.encode(text).ids == mapped(kept, original.encode(text).ids), text
    # Every new id names exactly one token and the numbering has no holes: ids fit the pruned embedding.
    assert pruned.get_vocab_size(with_added_tokens=True) == kept.size
    assert sorted(pruned.get_vocab(with_added_tokens=True).values()) == list(range(kept.size))
    # The file survives a save/load round trip through `tokenizers` unchanged.
    reloaded = Tokenizer.from_str(pruned.to_str())
    assert json.loads(reloaded.to_str()) == json.loads(pruned.to_str())
    assert [reloaded.encode(t).ids for t in corpus] == [pruned.encode(t).ids for t in corpus]


@PROPERTY_SETTINGS
@given(corpus=CORPORA, unseen=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_byte_level_bpe_still_encodes_any_text_losslessly(bpe_tokenizer, corpus, unseen):
    pruned, _kept, _json = pruned_for(as_json(bpe_tokenizer), corpus, "unk")
    # No UNK in byte-level BPE: text the corpus never had still round-trips through the kept byte symbols.
    assert pruned.decode(pruned.encode(unseen).ids) == unseen


def test_byte_level_bpe_keeps_all_256_byte_symbols(bpe_tokenizer):
    pruned, _kept, _json = pruned_for(as_json(bpe_tokenizer), ["hello"], "unk")
    assert len(BYTE_LEVEL_ALPHABET) == 256
    assert BYTE_LEVEL_ALPHABET <= set(pruned.get_vocab())


def test_bpe_keeps_the_merge_closure_and_only_merges_among_kept_tokens(bpe_tokenizer):
    tokenizer_json = as_json(bpe_tokenizer)
    original = open_tokenizer(tokenizer_json)
    corpus = ["my refund for the cancelled delivery"]
    used = {i for text in corpus for i in original.encode(text).ids}
    pruned, kept, pruned_json = pruned_for(tokenizer_json, corpus, "unk")
    vocab = pruned_json["model"]["vocab"]

    merges = [tuple(m) for m in pruned_json["model"]["merges"]]
    assert 0 < len(merges) < len(tokenizer_json["model"]["merges"])
    assert all(left in vocab and right in vocab and left + right in vocab for left, right in merges)
    # Tokens kept only because a used token is built from them (not used by the corpus, not a byte symbol).
    intermediates = {original.id_to_token(int(i)) for i in kept.kept_ids} - {original.id_to_token(i) for i in used}
    intermediates -= BYTE_LEVEL_ALPHABET | set(special_strings(tokenizer_json))
    assert intermediates
    for token in vocab:
        if len(token) > 1 and token not in special_strings(tokenizer_json):
            assert any(left + right == token for left, right in merges), f"{token!r} has no merge building it"


def test_bpe_without_the_closure_is_refused_not_written(bpe_tokenizer):
    tokenizer_json = as_json(bpe_tokenizer)
    original = open_tokenizer(tokenizer_json)
    counts = count_tokens(original, ["my refund for the cancelled delivery"])
    used_only = choose_kept_ids(counts, special_token_ids(tokenizer_json, {}), unk_id=None)  # no closure
    with pytest.raises(TokenizerError, match="needed by a kept token's merges"):
        prune_tokenizer(tokenizer_json, used_only.kept_ids)


def test_unigram_keeps_scores_unk_and_lowest_scored_piece(unigram_tokenizer):
    tokenizer_json = as_json(unigram_tokenizer)
    pieces = tokenizer_json["model"]["vocab"]
    _pruned, kept, pruned_json = pruned_for(tokenizer_json, ["where is my order"], "unk")
    original_scores = dict(map(tuple, pieces))
    assert all(score == original_scores[piece] for piece, score in pruned_json["model"]["vocab"])
    assert pruned_json["model"]["vocab"][pruned_json["model"]["unk_id"]][0] == "<unk>"
    lowest = min(pieces, key=lambda p: p[1])[0]
    assert lowest in {piece for piece, _ in pruned_json["model"]["vocab"]}


@pytest.mark.parametrize("family", ["wordpiece_tokenizer", "unigram_tokenizer", "albert_tokenizer"])
def test_oov_policy_decides_what_unseen_words_become(request, family):
    tokenizer_json = as_json(request.getfixturevalue(family))
    original = open_tokenizer(tokenizer_json)
    corpus, unseen = ["hello"], "xylophone quiz jazz"
    assert original.token_to_id("[UNK]" if family == "wordpiece_tokenizer" else "<unk>") not in original.encode(unseen).ids

    fallback, fallback_kept, _ = pruned_for(tokenizer_json, corpus, "fallback")
    unk_only, unk_kept, _ = pruned_for(tokenizer_json, corpus, "unk")
    unk_id = lambda kept: kept.new_id(unk_token_id(tokenizer_json))  # noqa: E731

    assert unk_id(fallback_kept) not in fallback.encode(unseen).ids  # degrades to known characters
    assert unk_id(unk_kept) in unk_only.encode(unseen).ids
    assert unk_kept.size < fallback_kept.size


def test_max_vocab_keeps_the_most_used_tokens_and_refuses_an_impossible_cap(wordpiece_tokenizer, bpe_tokenizer):
    corpus = TRAINING_TEXT[:80]
    for tokenizer in (wordpiece_tokenizer, bpe_tokenizer):
        tokenizer_json = as_json(tokenizer)
        original = open_tokenizer(tokenizer_json)
        counts = count_tokens(original, corpus).counts
        full = keep_for(tokenizer_json, corpus)
        cap = full.size - 40
        pruned, capped, _ = pruned_for(tokenizer_json, corpus, max_vocab=cap)
        assert cap - 5 <= capped.size <= cap
        dropped = sorted(set(full.kept_ids.tolist()) - set(capped.kept_ids.tolist()))
        assert dropped and max(counts[dropped]) <= np.sort(counts)[::-1][capped.size // 2]
        # Texts whose tokens all survived still encode exactly as before.
        for text in corpus:
            ids = mapped(capped, original.encode(text).ids)
            if min(ids) >= 0:
                assert pruned.encode(text).ids == ids
    with pytest.raises(TokenizerError, match="--max-vocab 10 is below"):
        keep_for(as_json(bpe_tokenizer), corpus, max_vocab=10)


def test_min_count_drops_rare_tokens(wordpiece_tokenizer):
    tokenizer_json = as_json(wordpiece_tokenizer)
    original = open_tokenizer(tokenizer_json)
    corpus = ["refund refund please", "refund now"]
    kept = keep_for(tokenizer_json, corpus, min_count=2)
    assert original.token_to_id("refund") in kept.kept_ids
    assert original.token_to_id("please") not in kept.kept_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_tokens_file_keeps_tokens_and_whole_strings(request, family, tmp_path):
    tokenizer_json = as_json(request.getfixturevalue(family))
    original = open_tokenizer(tokenizer_json)
    token = next(t for t in sorted(original.get_vocab()) if len(t) > 3 and t not in special_strings(tokenizer_json))
    localized = "Votre commande est en route — ¡gracias!"
    keep_file = tmp_path / "keep.txt"
    keep_file.write_text(f"{token}\n{localized}\n", encoding="utf-8")
    keep_ids = read_keep_tokens(keep_file, original)
    pruned, kept, _ = pruned_for(tokenizer_json, ["hi"], "unk", keep_ids=keep_ids)
    assert original.token_to_id(token) in kept.kept_ids
    assert pruned.encode(localized).ids == mapped(kept, original.encode(localized).ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_added_and_special_tokens_keep_working(request, family):
    tokenizer = Tokenizer.from_str(request.getfixturevalue(family).to_str())
    tokenizer.add_tokens(["Dishdash+"])
    tokenizer.add_special_tokens(["<extra_id_0>"])
    tokenizer_json = as_json(tokenizer)
    text = "Dishdash+<extra_id_0>refund"
    # The corpus never uses the added tokens: they are kept because they are added tokens.
    pruned, kept, pruned_json = pruned_for(tokenizer_json, ["refund"], "unk")
    ids = pruned.encode(text).ids
    assert ids == mapped(kept, tokenizer.encode(text).ids)
    assert pruned.id_to_token(ids[ids.index(pruned.token_to_id("Dishdash+"))]) == "Dishdash+"
    assert {t["content"]: t["id"] for t in pruned_json["added_tokens"]} == {
        t["content"]: kept.new_id(t["id"]) for t in tokenizer_json["added_tokens"]
    }
    # The post-processor's special tokens follow the renumbering too.
    with_specials = pruned.encode("refund").ids
    assert len(with_specials) > len(pruned.encode("refund", add_special_tokens=False).ids)
    assert with_specials == mapped(kept, tokenizer.encode("refund").ids)


def test_albert_sentencepiece_model_is_pruned_to_the_same_vocabulary(albert_tokenizer_folder):
    import sentencepiece
    from transformers import AlbertTokenizer

    tokenizer_json = json.loads((albert_tokenizer_folder / "tokenizer.json").read_text(encoding="utf-8"))
    corpus = TRAINING_TEXT[:60]
    pruned, kept, pruned_json = pruned_for(tokenizer_json, corpus, "fallback")
    files = prune_sentencepiece_files(albert_tokenizer_folder, tokenizer_json, pruned_json)
    assert list(files) == ["spiece.model"]
    processor = sentencepiece.SentencePieceProcessor(model_proto=files["spiece.model"])
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces == [piece for piece, _ in pruned_json["model"]["vocab"]]
    # A runtime reading the .model (with ALBERT's own text preparation: lowercase, no accents) gets the ids the
    # pruned tokenizer.json gives, and the pieces the full .model gives.
    slow = AlbertTokenizer(vocab_file=str(albert_tokenizer_folder / "spiece.model"))
    full = sentencepiece.SentencePieceProcessor(model_file=str(albert_tokenizer_folder / "spiece.model"))
    for text in corpus:
        prepared = slow.preprocess_text(text)
        ids = processor.encode(prepared)
        assert ids == pruned.encode(text, add_special_tokens=False).ids, text
        assert [processor.id_to_piece(i) for i in ids] == full.encode(prepared, out_type=str), text


def test_decoder_start_and_other_config_ids_are_renumbered():
    from transformers import PretrainedConfig

    tokenizer_json = {"model": {"type": "Unigram", "unk_id": 2, "vocab": [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]]}}
    config = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 40}
    specials = special_token_ids(tokenizer_json, config)
    assert {0, 1, 2, 40} <= specials
    kept = KeptVocab(kept_ids=np.array(sorted(specials | {7, 55})), original_size=100, unk_id=2)
    model_config = PretrainedConfig(**config)
    remap_config_ids(model_config, kept)
    assert (model_config.pad_token_id, model_config.eos_token_id, model_config.decoder_start_token_id) == (0, 1, 4)


def test_unhandled_family_is_refused_naming_it():
    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(TokenizerError, match=r"^tokenizer family WordLevel is not supported .*refusing to export$"):
        check_supported(as_json(word_level))

"""The in-graph tokenizer (string in): exact ids per family, outputs equal to the ids-in model's, a loadable .ort,
and one-line refusals for what the onnxruntime-extensions ops cannot reproduce.

Per family, with the corpus-pruned vocabulary and with the original one: tiny BERT / DistilBERT / ELECTRA
(WordPiece), RoBERTa (byte-level BPE), an XLM-R-style model whose tokenizer.json transformers converted from a real
SentencePiece .model (Unigram); the real all-MiniLM-L6-v2 once, int8, through the ORT format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest

from conftest import TINY_SIZES, TRAINING_TEXT, save_tiny_family_model
from pema_export.errors import InGraphTokenizerError, VerificationError
from pema_export.export import export_onnx
from pema_export.models import resolve_model
from pema_export.stages.ort_format import OPERATORS_CONFIG, convert_to_ort
from pema_export.pema import load_partial_model
from pema_export.profiles import load_target
from pema_export.tasks import resolve_task
from pema_export.string_input import (
    add_string_input, check_extensions, check_fidelity, check_string_parity, plan_string_input, session, tokenizer_model,
)
from pema_export.string_input.verify import tokenizer_only
from pema_export.tokenizers import prune_tokenizer, token_closure
from pema_export.tokenizers.sentencepiece_model import prune_sentencepiece_files
from pema_export.oov import get_policy
from pema_export.vocab import KeptVocab, choose_kept_ids, count_tokens, open_tokenizer, special_token_ids, unk_token_id

MAX_LENGTH = 128
CORPUS = TRAINING_TEXT[:80]
# Texts chosen to break a tokenizer that is only nearly right.
HARD_TEXTS = [
    "", " ", "   ", "Hello world", "HELLO World, how ARE you?", "Café naïve résumé ÉCOLE", "İstanbul straße STRASSE ẞ",
    "ΣΊΣΥΦΟΣ σίσυφος Ω", "Zażółć gęślą jaźń", "नमस्ते दुनिया", "مرحبا بالعالم", "我喜欢你，日本語テキスト。", "한국어 텍스트",
    "I ❤️ 🍕 and 👍🏽 🫠", "e\u0301cole x\u0300\u0301\u0302", "ﬁne ﬀ Ⅻ ① ½ Ａｂｃ", "tab\there\nnewline\r\n", "zero\u200bwidth soft\xadhyphen",
    "nb\xa0sp\u3000ideo\u2028line", "bad \ufffd char", "control\x07bell\x85escape\x1b", "don't won't it's", "e-mail: a.b@c.com http://x.y/z?q=1",
    "multiple     spaces  ", "  leading and trailing  ", "a" * 300, "supercalifragilistic" * 8, "x\U000F0000y\U000F0001z",
]
# Added tokens typed in the text: tokenizers splits them out first (the fill-mask case).
SPECIAL_TEXTS = ["hello [MASK] world", "[CLS]x[SEP]", "hello <mask> world", "hello  <mask>", "<s>hello</s>", "a <pad> b", "<mask> "]
FAMILIES = ["bert", "distilbert", "electra", "roberta", "xlmr"]
ALL_TEXTS = CORPUS + HARD_TEXTS + SPECIAL_TEXTS


@pytest.fixture(scope="module")
def sources(request, tiny_xlmr_sentencepiece):
    fixtures = {"bert": "tiny_bert", "distilbert": "tiny_distilbert", "electra": "tiny_electra", "roberta": "tiny_roberta"}
    return {name: request.getfixturevalue(fixture) for name, fixture in fixtures.items()} | {"xlmr": tiny_xlmr_sentencepiece}


def build_ids_model(source_path, out_dir, vocab: str, *, task=None, labels=None, precision="fp32"):
    """The ids-in model as the pipeline builds it (the corpus-pruned vocabulary, or every row), its shipped
    tokenizer.json and SentencePiece .model, and its pad id."""
    source = resolve_model(str(source_path))
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    config = source.read_config()
    if vocab == "pruned":
        counts = count_tokens(open_tokenizer(tokenizer_json), CORPUS)
        kept = choose_kept_ids(counts, special_token_ids(tokenizer_json, config), unk_token_id(tokenizer_json),
                               policy_ids=get_policy("unk").policy_ids(tokenizer_json), original_size=config["vocab_size"],
                               closure=token_closure(tokenizer_json))
    else:
        kept = KeptVocab(np.arange(config["vocab_size"], dtype=np.int64), config["vocab_size"], unk_token_id(tokenizer_json))
    shipped = prune_tokenizer(tokenizer_json, kept.kept_ids)
    spm = next(iter(prune_sentencepiece_files(source.path, tokenizer_json, shipped).values()), None)
    # the task as the pipeline resolves it: --task, else the labels' task, else the checkpoint's head
    partial = load_partial_model(source, kept, resolve_task(task, "text" if labels else None, config.get("architectures")), labels=labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(partial.model, partial.task, load_target("cpu"), out_dir / "fp32.onnx", pooling=partial.pooling)
    model = fp32
    if precision == "int8":
        from pema_export.stages.quantize import quantize_model

        model = out_dir / "int8.onnx"
        quantize_model(fp32, model, "int8", kept.size)
    pad_id = partial.model.config.pad_token_id or 0
    return model, shipped, spm, pad_id


class Built(NamedTuple):
    ids_model: Path
    string_model: Path
    shipped: dict  # the bundle's tokenizer.json
    pad_id: int
    plan: object


@pytest.fixture(scope="module")
def family_models(sources, tmp_path_factory):
    """{(family, vocab): Built}."""
    built = {}
    for family in FAMILIES:
        for vocab in ("pruned", "original"):
            work = tmp_path_factory.mktemp(f"{family}-{vocab}")
            ids_model, shipped, spm, pad_id = build_ids_model(sources[family], work, vocab)
            plan = plan_string_input(shipped, max_length=MAX_LENGTH, pad_id=pad_id, sentencepiece_model=spm)
            string_model = add_string_input(ids_model, plan, work / "string.onnx")
            built[family, vocab] = Built(ids_model, string_model, shipped, pad_id, plan)
    return built


@pytest.mark.parametrize("vocab", ["pruned", "original"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ids_equal_tokenizer_json(family_models, family, vocab):
    _ids_model, string_model, shipped, _pad, _plan = family_models[family, vocab]
    report = check_fidelity(tokenizer_only(string_model), shipped, ALL_TEXTS, max_length=MAX_LENGTH, batch_size=16)
    assert report.texts_checked == len(ALL_TEXTS) and report.tokens_checked > 1000


@pytest.mark.parametrize("vocab", ["pruned", "original"])
@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_equal_ids_in_model(family_models, family, vocab):
    ids_model, string_model, shipped, pad_id, _plan = family_models[family, vocab]
    texts = CORPUS[:20] + HARD_TEXTS[:12]
    one_by_one = check_string_parity(string_model, ids_model, shipped, texts, max_length=MAX_LENGTH, pad_id=pad_id)
    batched = check_string_parity(string_model, ids_model, shipped, texts, max_length=MAX_LENGTH, pad_id=pad_id, batch_size=8)
    assert one_by_one.max_abs_diff == 0.0 and batched.max_abs_diff == 0.0
    assert "last_hidden_state" in one_by_one.outputs


def test_string_model_takes_a_batch_of_strings(family_models):
    _ids_model, string_model, shipped, _pad, _plan = family_models["bert", "pruned"]
    runner = session(string_model)
    assert [(i.name, i.type) for i in runner.get_inputs()] == [("text", "tensor(string)")]
    hidden = runner.run(["last_hidden_state"], {"text": np.array(["a short one", "and a noticeably longer second text", ""], dtype=object)})[0]
    longest = len(open_tokenizer(shipped).encode("and a noticeably longer second text").ids)
    assert hidden.shape[:2] == (3, longest)
    empty = session(tokenizer_only(string_model)).run(None, {"text": np.array([], dtype=object)})
    assert [a.shape for a in empty] == [(0, 0), (0, 0)]  # the tokenizer takes an empty batch (the encoder itself does not)


def test_truncation_matches_the_ids_in_path(family_models):
    """Right truncation to max_length, the special tokens included, as tokenizers' enable_truncation."""
    _ids_model, string_model, shipped, _pad, _plan = family_models["roberta", "pruned"]
    long_texts = [" ".join(TRAINING_TEXT[:30]), "word " * 400]
    check_fidelity(tokenizer_only(string_model), shipped, long_texts, max_length=MAX_LENGTH)
    ids = session(tokenizer_only(string_model)).run(["input_ids"], {"text": np.array(long_texts, dtype=object)})[0]
    assert ids.shape == (2, MAX_LENGTH) and ids[0, -1] == shipped["post_processor"]["sep"][1]


@pytest.mark.parametrize("opset", [14, 21])
def test_every_opset_the_targets_allow(family_models, opset):
    """Targets export opset 14 to 21; the tokenizer's nodes are written for the model's own opset."""
    shipped = family_models["xlmr", "pruned"].shipped
    model = tokenizer_model(family_models["xlmr", "pruned"].plan, opset=opset)
    assert next(o.version for o in model.opset_import if o.domain == "") == opset
    check_fidelity(model.SerializeToString(), shipped, CORPUS[:10] + HARD_TEXTS, max_length=MAX_LENGTH)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlmr"])
def test_ort_format_loads_and_answers_the_same(family_models, family, tmp_path):
    ids_model, string_model, shipped, pad_id, _plan = family_models[family, "pruned"]
    ort_path = tmp_path / "model.ort"
    convert_to_ort(string_model, ort_path, "Fixed", "arm", custom_op_library=check_extensions())
    config = (tmp_path / OPERATORS_CONFIG).read_text(encoding="utf-8")
    assert "ai.onnx.contrib;1;" in config and "model.ort" in config
    report = check_string_parity(ort_path, ids_model, shipped, CORPUS[:20] + HARD_TEXTS[:8], max_length=MAX_LENGTH, pad_id=pad_id)
    assert report.max_abs_diff == 0.0


def test_classifier_and_fill_mask_outputs(wordpiece_tokenizer, tiny_bert, tmp_path):
    """A classifier's logits; a masked LM's per-token logits with input_ids/attention_mask to read them by."""
    ids_model, shipped, _spm, pad_id = build_ids_model(tiny_bert, tmp_path / "cls", "pruned", labels=["a", "b", "c"])
    plan = plan_string_input(shipped, max_length=MAX_LENGTH, pad_id=pad_id)
    classifier = add_string_input(ids_model, plan, tmp_path / "cls" / "string.onnx")
    assert check_string_parity(classifier, ids_model, shipped, CORPUS[:10], max_length=MAX_LENGTH, pad_id=pad_id).outputs == ("logits",)

    mlm = save_tiny_family_model(tmp_path / "mlm-src", "bert", {"tokenizer_class": "BertTokenizerFast"}, wordpiece_tokenizer,
                                 head="mlm", pad_token_id=0, **TINY_SIZES)
    ids_model, shipped, _spm, pad_id = build_ids_model(mlm, tmp_path / "mlm", "pruned", task="fill-mask")
    plan = plan_string_input(shipped, max_length=MAX_LENGTH, pad_id=pad_id)
    masked = add_string_input(ids_model, plan, tmp_path / "mlm" / "string.onnx", per_token=True)
    assert check_string_parity(masked, ids_model, shipped, CORPUS[:10], max_length=MAX_LENGTH, pad_id=pad_id).max_abs_diff == 0.0
    logits, input_ids, mask = session(masked).run(["logits", "input_ids", "attention_mask"], {"text": np.array(["the [MASK] is late"], dtype=object)})
    expected = open_tokenizer(shipped).encode("the [MASK] is late").ids
    assert input_ids[0].tolist() == expected and mask.sum() == len(expected)
    assert logits.shape == (1, len(expected), len(shipped["model"]["vocab"]))
    assert expected.index(open_tokenizer(shipped).token_to_id("[MASK]")) == 2


@pytest.mark.slow
def test_minilm_int8_string_in_ort(minilm_path, tmp_path):
    """The real model as the android target ships it: int8, string in, ORT format; corpus + held-out ids exact."""
    from conftest import SAMPLES

    ids_model, shipped, _spm, pad_id = build_ids_model(minilm_path, tmp_path, "pruned", precision="int8")
    plan = plan_string_input(shipped, max_length=MAX_LENGTH, pad_id=pad_id)
    string_model = add_string_input(ids_model, plan, tmp_path / "string.onnx")
    texts = [line.split("\t", 1)[-1] for name in ("app_texts.txt", "heldout.txt", "search_texts.txt")
             for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    fidelity = check_fidelity(tokenizer_only(string_model), shipped, texts + HARD_TEXTS + SPECIAL_TEXTS, max_length=MAX_LENGTH)
    assert fidelity.texts_checked == len(texts) + len(HARD_TEXTS) + len(SPECIAL_TEXTS)
    convert_to_ort(string_model, tmp_path / "model.ort", "Fixed", "arm", custom_op_library=check_extensions())
    report = check_string_parity(tmp_path / "model.ort", ids_model, shipped, texts[:50], max_length=MAX_LENGTH, pad_id=pad_id)
    assert report.max_abs_diff == 0.0 and report.outputs == ("last_hidden_state", "sentence_embedding")
    # the original 30,522-token vocabulary (what a remap bundle ships): the tokenizer alone
    original = json.loads(resolve_model(str(minilm_path)).tokenizer_json.read_text(encoding="utf-8"))
    plan = plan_string_input(original, max_length=MAX_LENGTH, pad_id=pad_id)
    check_fidelity(tokenizer_model(plan).SerializeToString(), plan.tokenizer_json, texts[:300] + HARD_TEXTS + SPECIAL_TEXTS, max_length=MAX_LENGTH)


def test_fidelity_names_the_first_text_that_differs(family_models):
    """U+0000 ends a text for the ops (C strings); tokenizers reads past it. The check names such a text."""
    _ids_model, string_model, shipped, _pad, _plan = family_models["bert", "pruned"]
    with pytest.raises(VerificationError, match=r"fidelity failed on text 'nul\\x00char'") as error:
        check_fidelity(tokenizer_only(string_model), shipped, ["fine", "nul\x00char", "also fine"], max_length=MAX_LENGTH)
    assert "\n" not in str(error.value)


def refused(tokenizer_json, sentencepiece_model=None) -> str:
    with pytest.raises(InGraphTokenizerError) as error:
        plan_string_input(tokenizer_json, max_length=MAX_LENGTH, pad_id=0, sentencepiece_model=sentencepiece_model)
    message = str(error.value)
    assert "\n" not in message
    return message


def tokenizer_json_of(folder) -> dict:
    return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))


def test_refusals_are_one_line(tiny_albert, tiny_xlm_roberta, tiny_bert, tiny_roberta, tiny_xlmr_sentencepiece):
    spm = (tiny_albert / "spiece.model").read_bytes()
    assert "Lowercase" in refused(tokenizer_json_of(tiny_albert), spm)  # ALBERT lowercases and strips accents first
    assert "needs one" in refused(tokenizer_json_of(tiny_xlm_roberta))  # Unigram without a .model
    assert "NFKC" in refused(tokenizer_json_of(tiny_xlm_roberta), (tiny_xlmr_sentencepiece / "sentencepiece.bpe.model").read_bytes())

    bert = tokenizer_json_of(tiny_bert)
    assert "NFC" in refused({**bert, "normalizer": {"type": "NFC"}})
    assert "pre-tokenizer Whitespace" in refused({**bert, "pre_tokenizer": {"type": "Whitespace"}})
    assert "max_input_chars_per_word" in refused({**bert, "model": {**bert["model"], "max_input_chars_per_word": 50}})
    single_word = [{**token, "single_word": True} if token["content"] == "[MASK]" else token for token in bert["added_tokens"]]
    assert "single_word" in refused({**bert, "added_tokens": single_word})

    roberta = tokenizer_json_of(tiny_roberta)
    assert "byte fallback" in refused({**roberta, "model": {**roberta["model"], "byte_fallback": True}})
    assert "normalizer" in refused({**roberta, "normalizer": {"type": "Lowercase"}})
    lstrip = [{**token, "lstrip": True} if token["content"] == "<mask>" else token for token in roberta["added_tokens"]]
    assert "lstrip" in refused({**roberta, "added_tokens": lstrip})  # this tiny vocabulary splits U+00A0 mid-character

    assert "WordLevel" in refused({"model": {"type": "WordLevel", "vocab": {}}})


def test_legacy_sentencepiece_layout(tiny_xlmr_sentencepiece):
    """tokenizer.json files converted by older transformers keep a piece's trailing space as a "▁" token."""
    legacy = tokenizer_json_of(tiny_xlmr_sentencepiece)
    legacy["normalizer"]["normalizers"] = [legacy["normalizer"]["normalizers"][0], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
    for token in legacy["added_tokens"]:
        token["normalized"] = False
    spm = (tiny_xlmr_sentencepiece / "sentencepiece.bpe.model").read_bytes()
    plan = plan_string_input(legacy, max_length=MAX_LENGTH, pad_id=1, sentencepiece_model=spm)
    texts = HARD_TEXTS + SPECIAL_TEXTS + ["ends in a space ", "x\t", "<s> ", "a <s>b", "a\u3000<mask>"]
    assert check_fidelity(tokenizer_model(plan).SerializeToString(), plan.tokenizer_json, texts, max_length=MAX_LENGTH).texts_checked == len(texts)
    assert len(onnx.load_from_string(tokenizer_model(plan).SerializeToString()).graph.node) > 0

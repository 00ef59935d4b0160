"""--task fill-mask: the tied output projection is pruned with the input embedding, so the exported logits cover
exactly the kept vocabulary and the mask is still predicted as the full model predicts it."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from conftest import ELECTRA_TOKENIZER_CONFIG, ROBERTA_IDS, TINY_SIZES, TRAINING_TEXT, XLMR_TOKENIZER_CONFIG, save_tiny_family_model
from pema_export.models import resolve_model
from pema_export.pema import input_embedding, load_partial_model
from pema_export.pipeline import ExportOptions, run
from pema_export.tasks import TASKS
from pema_export.vocab import KeptVocab

CORPUS = TRAINING_TEXT[:30]
# BertLMPredictionHead and RobertaLMHead hold the output bias under two names; both kinds are covered.
MLM_MODELS = {
    "bert": ("[MASK]", lambda folder, wp, _u: save_tiny_family_model(
        folder, "bert", {**ELECTRA_TOKENIZER_CONFIG, "tokenizer_class": "BertTokenizer"}, wp, head="mlm", pad_token_id=0, **TINY_SIZES
    )),
    "xlm-roberta": ("<mask>", lambda folder, _wp, unigram: save_tiny_family_model(
        folder, "xlm-roberta", XLMR_TOKENIZER_CONFIG, unigram, head="mlm", **TINY_SIZES, **ROBERTA_IDS
    )),
}


@pytest.fixture(scope="module", params=sorted(MLM_MODELS))
def mlm(request, tmp_path_factory, wordpiece_tokenizer, unigram_tokenizer):
    mask, build = MLM_MODELS[request.param]
    folder = build(tmp_path_factory.mktemp(f"mlm-{request.param}"), wordpiece_tokenizer, unigram_tokenizer)
    with torch.no_grad():
        # Give the output bias a spread, so a wrong bias row would change the logits.
        from transformers import AutoModelForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(folder)
        model.get_output_embeddings().bias.copy_(torch.linspace(-1, 1, model.config.vocab_size))
        model.save_pretrained(folder)
    return folder, mask


def full_logits(folder, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits.numpy()[0]


def test_fill_mask_logits_cover_exactly_the_kept_vocabulary_and_predict_the_same_token(mlm, tmp_path):
    folder, mask = mlm
    original = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = f"where is my {mask} order"
    original_ids = original.encode(text).ids
    mask_position = original_ids.index(original.token_to_id(mask))
    expected_logits = full_logits(folder, original_ids)
    predicted = original.id_to_token(int(expected_logits[mask_position].argmax()))
    # The app's corpus has the text; the word the full model predicts is kept through --keep-tokens.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS + [text]) + "\n", encoding="utf-8")
    keep = tmp_path / "keep.txt"
    keep.write_text(predicted + "\n", encoding="utf-8")

    out = tmp_path / "bundle" / "model.onnx"
    # fp32: the comparison with the full PyTorch model is exact up to float error (int8 is checked elsewhere, on a
    # trained model; a random head's logits are too flat for it).
    manifest = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(folder), task="fill-mask",
                                 oov="unk", keep_tokens=str(keep), quantize="none")).manifest.to_json()

    assert manifest["model"]["task"] == "fill-mask" and manifest["parity"]["outputs"] == ["logits"]
    pruned = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    kept_ids = np.array([original.token_to_id(t) for t in sorted(pruned.get_vocab(with_added_tokens=True), key=pruned.token_to_id)])
    assert len(kept_ids) == manifest["vocab"]["kept"] < original.get_vocab_size()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    ids = np.array([pruned.encode(text).ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(ids)
    logits = session.run(["logits"], feeds)[0][0]

    assert logits.shape == (len(original_ids), len(kept_ids))
    np.testing.assert_allclose(logits, expected_logits[:, kept_ids], atol=1e-4)
    assert pruned.id_to_token(int(logits[mask_position].argmax())) == predicted


def test_partial_masked_lm_keeps_its_output_projection_tied(mlm):
    folder, _mask = mlm
    source = resolve_model(str(folder))
    vocab_size = json.loads((folder / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    # Every third row, and the special ids 0..4 (pad, bos/eos, unk, mask) the config refers to.
    kept = KeptVocab(kept_ids=np.union1d(np.arange(0, 200, 3), np.arange(5)), original_size=vocab_size, unk_id=None)
    model = load_partial_model(source, kept, TASKS["fill-mask"]).model
    output = model.get_output_embeddings()
    assert output.weight is input_embedding(model).weight
    assert output.weight.shape[0] == output.bias.shape[0] == kept.size
    # Re-tying (as save/export code paths do) must not bring the full-size bias back.
    model.tie_weights()
    assert model.get_output_embeddings().bias.shape[0] == kept.size
    bias_names = [name for name, p in model.named_parameters() if p.ndim == 1 and p.shape[0] == kept.original_size]
    assert bias_names == []

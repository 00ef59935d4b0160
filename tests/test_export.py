"""The models the README names export end to end: DistilBERT (its first example), with the tiny fixture model."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from conftest import urgent_or_normal
from pema_export.cli import main


def test_a_distilbert_classifier_exports_for_the_default_target(tmp_path, tiny_distilbert):
    """`pema-export --model distilbert --corpus ... --out ...` on the tiny DistilBERT: fine-tuned, fused and int8 for
    cpu, verified; DistilBERT's graph has no token_type_ids input (BERT's has)."""
    corpus = urgent_or_normal(tmp_path, "app_texts.txt", 120, "corpus.txt")
    out = tmp_path / "distilbert" / "model.onnx"
    # trained enough for margins int8 keeps (a random head's tiny logits flip under int8); how well this tiny
    # DistilBERT learns is not the point here: its training swings between 0.5 and 1.0 held-out accuracy
    assert main(["--model", str(tiny_distilbert), "--corpus", str(corpus), "--out", str(out), "--epochs", "8", "--lr", "5e-3",
                 "--quiet"]) == 0
    manifest = json.loads((out.parent / "pema-manifest.json").read_text())
    assert manifest["model"]["architecture"] == "DistilBertForSequenceClassification"
    assert manifest["target"]["quantize"] == "int8" and manifest["vocab"]["kept"] < manifest["vocab"]["original"]
    assert manifest["parity"]["tokenization_mismatches"] == 0 and manifest["parity"]["max_abs_diff"] <= 1e-4
    stages = {stage["stage"]: stage for stage in manifest["stages"]}
    assert stages["optimize"]["applied"] and stages["quantize int8"]["check"]["top1_agreement"] >= 0.99
    assert manifest["training"]["labels"] == ["normal", "urgent"]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == {"input_ids", "attention_mask"}
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    ids = np.array([tokenizer.encode("urgent my order never arrived").ids], dtype=np.int64)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert logits.shape == (1, 2) and np.isfinite(logits).all()

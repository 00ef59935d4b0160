"""Token classification on the real MiniLM, once end to end: fine-tuned with the partial embedding on part of the
sample slot corpus, shipped to the web (fp32 and int8), run by transformers.js's token-classification pipeline in
Node, and read back in Python: the same answers, and the manifest's figures recomputed from the shipped files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO, SAMPLES
from pema_export.entities import spans
from pema_export.pipeline import ExportOptions, run
from pema_export.train import TrainOptions
from pema_export.vocab import open_tokenizer

pytestmark = pytest.mark.slow

TRANSFORMERS_JS = REPO / "node_modules" / "@huggingface" / "transformers" / "package.json"
MODELS = {"fp32": "onnx/model.onnx", "q8": "onnx/model_quantized.onnx"}


def _lines(name: str, count: int) -> list[str]:
    return (SAMPLES / name).read_text(encoding="utf-8").splitlines()[:count]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    """MiniLM on the first 160 sample sentences (the task's default training: 10 epochs at 3e-4; 3 epochs at 1e-4 left
    entity F1 at 0.03, 3 at 3e-4 at 0.49), held out on 40
    sentences of the separately written file."""
    folder = tmp_path_factory.mktemp("minilm-slots")
    corpus, heldout = folder / "slots.jsonl", folder / "heldout.jsonl"
    corpus.write_text("\n".join(_lines("slot_texts.jsonl", 160)) + "\n", encoding="utf-8")
    records = [json.loads(line) for line in _lines("slot_heldout.jsonl", 40)]
    heldout.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = folder / "slots" / "model.onnx"
    result = run(ExportOptions(corpus=[str(corpus)], out=str(out), target="web", eval_file=str(heldout),
                               train=TrainOptions()))
    return out.parent, result.manifest.to_json(), records


def _python_answers(bundle_dir: Path, model: str, texts: list[str], labels: list[str]) -> tuple[list, list]:
    """Shipped tokenizer and model in onnxruntime, one text at a time: (ids, per-piece label and top probability)."""
    tokenizer = open_tokenizer(bundle_dir / "tokenizer.json")
    special_ids = {piece for piece, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    session = ort.InferenceSession(str(bundle_dir / model), providers=["CPUExecutionProvider"])
    ids, answers = [], []
    for encoding in tokenizer.encode_batch(texts):
        row = np.array([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": row, "attention_mask": np.ones_like(row), "token_type_ids": np.zeros_like(row)}
        logits = session.run(["logits"], feeds)[0][0].astype(np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        ids.append(encoding.ids)
        # "special" as transformers.js's pipeline reads it: a piece that decodes to nothing without special tokens,
        # i.e. [CLS], [SEP] and also an [UNK] inside the text (a word the pruned vocabulary lacks is not reported)
        answers.append([(labels[int(p.argmax())], float(p.max()), bool(special) or piece in special_ids)
                        for p, special, piece in zip(probabilities, encoding.special_tokens_mask, encoding.ids)])
    return ids, answers


def test_transformers_js_token_classification_pipeline_gives_the_python_entities(bundle, tmp_path):
    bundle_dir, manifest, records = bundle
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the web bundle is checked with transformers.js in Node 20")
    if not TRANSFORMERS_JS.is_file():
        pytest.fail(f"{TRANSFORMERS_JS.parent} is missing: run `make setup` (ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
    texts = [r["text"] for r in records[:16]]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"folder": str(bundle_dir), "texts": texts, "dtypes": list(MODELS)}))
    done = subprocess.run([node, str(REPO / "tests" / "js" / "token_classification.mjs"), str(request)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)

    labels = manifest["training"]["labels"]
    for dtype, model in MODELS.items():
        ids, python = _python_answers(bundle_dir, model, texts, labels)
        assert answer["ids"] == ids
        found = 0
        for js_entities, pieces in zip(answer["entities"][dtype], python):
            # the pipeline's raw answers: every non-special piece whose top label is not O, by position
            expected = [(index, label) for index, (label, _, special) in enumerate(pieces) if label != "O" and not special]
            assert [(e["index"], e["entity"]) for e in js_entities] == expected, dtype
            for entity in js_entities:
                assert entity["score"] == pytest.approx(pieces[entity["index"]][1], abs=1e-5)
            found += len(expected)
        assert found >= len(texts), dtype  # the model finds entities: the comparison is not of empty lists


def test_the_manifest_figures_hold_for_the_shipped_files(bundle):
    bundle_dir, manifest, records = bundle
    labels = manifest["training"]["labels"]
    assert manifest["model"]["task"] == "token-classification" and manifest["vocab"]["kept"] < 2000

    # int8: per-token top-1 agreement with fp32 on the corpus texts' real (non-padding) pieces, one text at a time
    check = next(stage["check"] for stage in manifest["stages"] if stage["stage"] == "quantize int8")
    corpus = [json.loads(line)["text"] for line in _lines("slot_texts.jsonl", 160)]
    _, fp32 = _python_answers(bundle_dir, MODELS["fp32"], corpus, labels)
    _, q8 = _python_answers(bundle_dir, MODELS["q8"], corpus, labels)
    same = [a[0] == b[0] for x, y in zip(fp32, q8) for a, b in zip(x, y)]
    assert check["bound"] == "top1_agreement >= 0.99" and check["texts_checked"] == len(corpus)
    assert np.mean(same) == pytest.approx(check["top1_agreement"], abs=1e-9) and np.mean(same) >= 0.99

    # held-out entity F1 of the shipped fp32 model, read as an app would: the first piece of each word, strict
    # IOB2, entities compared as character spans with the file's own spans
    tokenizer = open_tokenizer(bundle_dir / "tokenizer.json")
    _, answers = _python_answers(bundle_dir, MODELS["fp32"], [r["text"] for r in records], labels)
    correct = predicted = true = 0
    for record, encoding, pieces in zip(records, tokenizer.encode_batch([r["text"] for r in records]), answers):
        firsts = [i for i, word in enumerate(encoding.word_ids) if word is not None and (i == 0 or encoding.word_ids[i - 1] != word)]
        ends = [encoding.offsets[j - 1][1] for j in firsts[1:]] + [encoding.offsets[len(encoding.ids) - 2][1]]
        got = {(encoding.offsets[firsts[a]][0], ends[b - 1], label) for a, b, label in spans([pieces[i][0] for i in firsts])}
        want = {(e["start"], e["end"], e["label"]) for e in record["entities"]}
        correct, predicted, true = correct + len(got & want), predicted + len(got), true + len(want)
    precision, recall = correct / predicted, correct / true
    heldout = manifest["heldout"]
    assert heldout["model"] == MODELS["fp32"] and heldout["texts"] == len(records)
    assert (heldout["entity_precision"], heldout["entity_recall"]) == pytest.approx((precision, recall), abs=1e-6)
    assert heldout["entity_f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-6)
    assert heldout["entity_f1"] > 0.5  # trained on 160 sentences for 3 epochs: it has learned the slots

"""End to end on the real embedded all-MiniLM-L6-v2 and the sample corpora, through the installed command.

The classifier is the default export: `make demo`'s command (read from the Makefile), so MiniLM fine-tuned for 5
epochs and shipped for the cpu target, fused and int8."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from conftest import REPO, SAMPLES, run_cli


def demo_arguments(out) -> list[str]:
    """`make demo`'s pema-export arguments, with its --out moved to ``out``."""
    recipe = re.search(r"^demo:.*\n\t\$\(VENV\)/bin/pema-export (.+)$", (REPO / "Makefile").read_text(), re.M)
    arguments = recipe.group(1).split()
    assert arguments[arguments.index("--out") + 1] == "build/demo/model.onnx"
    arguments[arguments.index("--out") + 1] = str(out)
    return arguments


@pytest.fixture(scope="module")
def classifier_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm-classifier") / "demo" / "model.onnx"
    result = run_cli(*demo_arguments(out), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out, json.loads((out.parent / "pema-manifest.json").read_text()), result.stdout


def test_bundle_holds_exactly_the_promised_files(classifier_bundle):
    out, manifest, _ = classifier_bundle
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json", "pema-manifest.json", "pema-timings.json"]
    )
    for name, entry in manifest["files"].items():
        assert (out.parent / name).stat().st_size == entry["bytes"]


def test_manifest_proves_fidelity_parity_and_a_smaller_vocabulary(classifier_bundle):
    out, manifest, stdout = classifier_bundle
    parity = manifest["parity"]
    texts = sum(1 for line in (SAMPLES / "app_texts.txt").read_text().splitlines() if line.strip())
    assert parity["tokenization_texts_checked"] == texts and parity["tokenization_mismatches"] == 0
    assert parity["texts_checked"] == texts  # the sample corpus is smaller than the 1,000-text parity sample
    assert parity["max_abs_diff"] <= 1e-4
    assert manifest["vocab"]["original"] == 30522
    assert manifest["vocab"]["kept"] < manifest["vocab"]["original"]
    assert manifest["params"]["embedding_original"] == 30522 * 384
    assert manifest["params"]["embedding_exported"] == manifest["vocab"]["kept"] * 384
    assert manifest["training"]["train_size"] + manifest["training"]["eval_size"] == texts
    assert set(manifest["versions"]) >= {"torch", "transformers", "optimum", "onnx", "onnxruntime", "tokenizers"}
    assert "30,522 tokens kept" in stdout


def test_the_default_export_trains_five_epochs_and_ships_a_checked_fused_int8_model(classifier_bundle):
    _, manifest, stdout = classifier_bundle
    assert manifest["target"]["name"] == "cpu" and manifest["target"]["quantize"] == "int8"
    assert manifest["training"]["epochs"] == 5 and len(manifest["training"]["eval_accuracy_per_epoch"]) == 5
    assert manifest["vocab"]["oov"] == "tail" and manifest["training"]["oov_dropout"] == 0.0  # --oov auto's choice
    assert manifest["vocab"]["tail"]["rows"] == 30522 - manifest["vocab"]["kept"] and manifest["vocab"]["tail"]["row_bytes"] == 96
    stages = {stage["stage"]: stage for stage in manifest["stages"]}
    assert stages["optimize"]["applied"] and stages["optimize"]["fused"]["Attention"] == 6
    assert stages["optimize"]["check"]["max_abs_diff"] <= 1e-4
    assert stages["quantize int8"]["check"]["top1_agreement"] >= 0.99
    assert f"training    5 epochs on {manifest['training']['train_size']:,} texts" in stdout


def test_the_int8_model_is_about_one_byte_per_exported_parameter(classifier_bundle):
    out, manifest, _ = classifier_bundle
    exported = manifest["params"]["exported"]
    tail = sum(manifest["vocab"]["tail"]["bytes"].values())  # the coded rows: codes, fp32 codebook, row index
    assert abs(out.stat().st_size - tail - exported) / exported < 0.05  # fp32 would be 4 bytes each
    assert manifest["embedding_bytes"]["model.onnx"] == {"dtype": "uint8", "bytes": manifest["vocab"]["kept"] * 384}


def test_config_and_tokenizer_agree_with_the_pruned_model(classifier_bundle):
    out, manifest, _ = classifier_bundle
    config = json.loads((out.parent / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    # the default (--oov tail) ships the original tokenizer and numbering; the corpus's rows are the exact ones
    assert config["vocab_size"] == manifest["vocab"]["original"] == tokenizer.get_vocab_size() == 30522
    assert manifest["vocab"]["kept"] + manifest["vocab"]["tail"]["rows"] == 30522
    assert sorted(config["id2label"].values()) == sorted(manifest["training"]["labels"])
    assert config["pad_token_id"] == tokenizer.token_to_id("[PAD]")
    embedding = next(i for i in onnx.load(str(out)).graph.initializer if i.name.endswith("word_embeddings.weight_quantized"))
    assert list(embedding.dims) == [manifest["vocab"]["kept"], 384]


def test_the_bundle_alone_classifies_held_out_texts_it_never_saw(classifier_bundle):
    """onnxruntime, tokenizer.json and config.json's labels, nothing else, on samples/heldout.txt (written apart from
    the corpus): accuracy well above what an untrained head gets (about 1 in 6)."""
    out, _, _ = classifier_bundle
    tokenizer = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    id2label = json.loads((out.parent / "config.json").read_text())["id2label"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pairs = [line.split("\t", 1) for line in (SAMPLES / "heldout.txt").read_text(encoding="utf-8").splitlines() if line]
    right = 0
    for label, text in pairs:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        right += id2label[str(int(logits.argmax()))] == label
    assert len(pairs) == 164 and right / len(pairs) >= 0.9


def test_unlabelled_corpus_exports_sentence_embeddings_like_sentence_transformers(tmp_path, minilm_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "embed" / "model.onnx"
    result = run_cli("--corpus", SAMPLES / "search_texts.txt", "--out", out, "--quantize", "none", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out.parent / "pema-manifest.json").read_text())
    assert manifest["model"]["task"] == "feature-extraction" and manifest["training"] is None
    assert "sentence_embedding" in manifest["parity"]["outputs"]
    texts = [t for t in (SAMPLES / "search_texts.txt").read_text().splitlines() if t.strip()][:16]
    tokenizer = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    session = ort.InferenceSession(str(out))
    got = []
    for text in texts:
        encoding = tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(encoding.ids)), dtype=np.int64),
            "token_type_ids": np.zeros((1, len(encoding.ids)), dtype=np.int64),
        }
        got.append(session.run(["sentence_embedding"], feeds)[0][0])
    # the original, unpruned model through the sentence-transformers library itself
    want = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.abs(np.array(got) - want).max() < 1e-4


def test_scan_predicts_the_bundle_within_half_a_percent_and_never_below(classifier_bundle, capsys):
    from pema_export.cli import main
    from pema_export.size import bundle_report

    out, manifest, _ = classifier_bundle
    assert main(["scan", "--corpus", str(SAMPLES / "app_texts.txt"), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    written = bundle_report(out.parent).total_bytes
    assert predicted["vocab"]["kept"] == manifest["vocab"]["kept"]
    # --max-bytes chooses the vocabulary from this prediction: it must not come out below the bundle
    assert 0 <= (predicted["predicted_bytes"]["total"] - written) / written < 0.005


def test_sample_classifier_bundle_did_not_grow(classifier_bundle):
    from conftest import check_size_baseline

    out, _, _ = classifier_bundle
    check_size_baseline(out.parent, "minilm-app_texts-cpu")

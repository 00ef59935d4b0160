"""Issue 11: --oov tail. The corpus's rows exact, every other row a product-quantization code of its pretrained value,
decoded in the graph; the original tokenizer ships. Each test rebuilds what the bundle should answer from the
bundle's own tables and the model's checkpoint, independently of the export's code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import REPO, SAMPLES, TRAINING_TEXT, run_cli, sample_head, transformers_js_outputs
from pema_export.pipeline import ExportOptions, run
from pema_export.rowcodes import UNCOVERED_LOGIT, row_cosines
from pema_export.scan import ScanOptions, scan_report
from pema_export.train import TrainOptions
from pema_export.vocab import open_tokenizer

UNSEEN = ["The courier vanished with my lasagne and the receipt", "Refund the tiramisu, it arrived frozen solid",
          "zebra xylophone quantum harpsichord"]
TABLES = ("weight", "row_of", "codes", "codebook", "offsets")


def tail_tables(model_path) -> dict[str, np.ndarray]:
    """The tail embedding's initializers in a shipped fp32 graph, by their last name."""
    graph = onnx.load(str(model_path)).graph
    found = {}
    for tensor in graph.initializer:
        prefix, _, last = tensor.name.rpartition(".")
        if prefix.endswith("word_embeddings") and last in TABLES:
            found[last] = numpy_helper.to_array(tensor)
    assert sorted(found) == sorted(TABLES), sorted(found)
    return found


def decoded_matrix(model_path) -> np.ndarray:
    """Every original id's input row as the bundle stores it: its exact row, or its code through the codebook."""
    t = tail_tables(model_path)
    kept, rows = len(t["weight"]), t["row_of"].astype(np.int64)
    matrix = np.empty((len(rows), t["weight"].shape[1]), dtype=np.float32)
    exact = rows < kept
    matrix[exact] = t["weight"][rows[exact]]
    codes = t["codes"][rows[~exact] - kept].astype(np.int64) + t["offsets"]
    matrix[~exact] = t["codebook"][codes].reshape(len(codes), -1)
    return matrix


def export(folder, corpus, model, **options):
    out = folder / "model.onnx"
    result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(model), oov="tail", **options))
    return out, result.manifest.to_json()


def run_onnx(path, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.asarray([ids], dtype=np.int64)
    feeds = {"input_ids": feed, "attention_mask": np.ones_like(feed), "token_type_ids": np.zeros_like(feed)}
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def with_rows(model, matrix: np.ndarray):
    """``model`` reading ``matrix`` as its input embedding (every original id)."""
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(torch.from_numpy(matrix))
    return model.eval()


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory, tiny_full_vocab):
    corpus = tmp_path_factory.mktemp("queries") / "queries.txt"
    corpus.write_text("\n".join(TRAINING_TEXT[:60]) + "\n", encoding="utf-8")
    return export(tmp_path_factory.mktemp("tail-encoder"), corpus, tiny_full_vocab, quantize="none")


def test_a_tail_bundle_ships_the_original_tokenizer_and_numbering(encoder_bundle, tiny_full_vocab):
    out, manifest = encoder_bundle
    original, shipped = open_tokenizer(tiny_full_vocab / "tokenizer.json"), open_tokenizer(out.parent / "tokenizer.json")
    assert shipped.get_vocab() == original.get_vocab()
    assert [e.ids for e in shipped.encode_batch(UNSEEN)] == [e.ids for e in original.encode_batch(UNSEEN)]
    assert json.loads((out.parent / "config.json").read_text())["vocab_size"] == 30522
    tail = manifest["vocab"]["tail"]
    assert manifest["vocab"]["oov"] == "tail" and manifest["vocab"]["remap"] is None
    assert tail["rows"] == 30522 - manifest["vocab"]["kept"] and tail["row_bytes"] == 16  # 32 wide, fp32 files: 32 / 2
    assert tail["bytes"]["codes"] == tail["rows"] * 16 and tail["bytes"]["row_index"] == 4 * 30522


def test_kept_ids_read_their_exact_rows_and_the_others_their_decoded_pretrained_rows(encoder_bundle, tiny_full_vocab):
    from transformers import AutoModel

    out, manifest = encoder_bundle
    pretrained = AutoModel.from_pretrained(tiny_full_vocab).get_input_embeddings().weight.detach().numpy()
    decoded = decoded_matrix(out)
    kept = np.flatnonzero(tail_tables(out)["row_of"].astype(np.int64) < manifest["vocab"]["kept"])
    assert len(kept) == manifest["vocab"]["kept"]
    np.testing.assert_array_equal(decoded[kept], pretrained[kept])
    tail = np.setdiff1d(np.arange(30522), kept)
    cosines = row_cosines(decoded[tail], pretrained[tail])
    recorded = manifest["vocab"]["tail"]["reconstruction_cosine"]
    assert recorded["mean"] == pytest.approx(float(cosines.mean()), abs=1e-5)
    assert recorded["min"] == pytest.approx(float(cosines.min()), abs=1e-5)
    assert 0.3 < recorded["mean"] < 0.999  # a code, not the rows themselves and not noise


def test_the_graph_answers_as_the_full_model_with_its_tail_rows_decoded(encoder_bundle, tiny_full_vocab):
    """On texts made of tokens the corpus never had: the shipped graph == the original model whose rows outside the
    corpus are replaced by the bundle's decoded codes (and != the original model itself)."""
    from transformers import AutoModel

    out, manifest = encoder_bundle
    reference = with_rows(AutoModel.from_pretrained(tiny_full_vocab), decoded_matrix(out))
    original = AutoModel.from_pretrained(tiny_full_vocab).eval()
    tokenizer = open_tokenizer(out.parent / "tokenizer.json")
    row_of = tail_tables(out)["row_of"].astype(np.int64)
    for text in UNSEEN:
        ids = tokenizer.encode(text).ids
        assert (row_of[ids] >= manifest["vocab"]["kept"]).any()  # the text reaches the tail
        got = run_onnx(out, ids)
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
            plain = original(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(got - plain).max() > 1e-3
    parity = manifest["vocab"]["tail"]["parity"]
    assert parity["texts_with_tail_tokens"] >= 32 and parity["max_abs_diff"] <= 1e-4


def test_a_fine_tuned_tail_bundle_is_the_full_checkpoint_with_its_tail_decoded(tmp_path, tiny_full_vocab, labelled_corpus):
    """Training touches only the corpus's rows: the bundle == the --save-full checkpoint (trained rows merged into
    the pretrained matrix) reading the decoded tail; in fp32 files the default is 32 / 2 = 16 bytes a row."""
    from transformers import AutoModelForSequenceClassification

    out, manifest = export(tmp_path / "tail", labelled_corpus, tiny_full_vocab, quantize="none",
                           save_full=str(tmp_path / "full"), train=TrainOptions(epochs=1))
    assert manifest["vocab"]["tail"]["row_bytes"] == 16 and manifest["training"]["oov_dropout"] == 0.0
    full = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full")
    trained = full.get_input_embeddings().weight.detach().numpy().copy()
    decoded = decoded_matrix(out)
    kept = np.flatnonzero(tail_tables(out)["row_of"].astype(np.int64) < manifest["vocab"]["kept"])
    np.testing.assert_array_equal(decoded[kept], trained[kept])
    reference = with_rows(full, decoded)
    tokenizer = open_tokenizer(out.parent / "tokenizer.json")
    for text in UNSEEN:
        ids = tokenizer.encode(text).ids
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([ids])).logits.numpy()
        assert np.abs(run_onnx(out, ids) - want).max() <= 1e-4


@pytest.mark.parametrize("family", ["tiny_roberta", "tiny_xlm_roberta", "tiny_albert", "tiny_electra", "tiny_distilbert"])
def test_every_tokenizer_family_decodes_its_tail_in_the_graph(request, tmp_path, family):
    from transformers import AutoModel

    model = request.getfixturevalue(family)
    corpus = tmp_path / "corpus.txt"
    # a few texts: the tiny vocabularies (600-800 tokens, BPE keeping its 256 byte symbols) keep 256 rows for the tail
    corpus.write_text("\n".join(TRAINING_TEXT[:4]) + "\n", encoding="utf-8")
    out, manifest = export(tmp_path / "bundle", corpus, model, quantize="none")
    reference = with_rows(AutoModel.from_pretrained(model), decoded_matrix(out))
    tokenizer = open_tokenizer(out.parent / "tokenizer.json")
    assert tokenizer.get_vocab() == open_tokenizer(model / "tokenizer.json").get_vocab()
    for text in UNSEEN + TRAINING_TEXT[200:203]:
        ids = tokenizer.encode(text).ids
        with torch.no_grad():
            want = reference(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
        assert np.abs(run_onnx(out, ids) - want).max() <= 1e-4
    assert manifest["vocab"]["tail"]["parity"]["max_abs_diff"] <= 1e-4


@pytest.fixture(scope="module")
def target_bundles(tmp_path_factory, tiny_full_vocab):
    corpus = sample_head(tmp_path_factory.mktemp("corpus"), "app_texts.txt", 120, name="corpus.txt")
    bundles = {}
    for target in ("android", "web"):
        out = tmp_path_factory.mktemp(f"tail-{target}") / "model.onnx"
        result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(tiny_full_vocab), target=target,
                                   oov="tail", quantize="none", train=TrainOptions(epochs=1)))
        bundles[target] = (out.parent, result.manifest.to_json())
    return bundles


def test_the_ort_file_carries_the_tail_and_answers_as_the_onnx_graph(target_bundles, tmp_path):
    bundle, manifest = target_bundles["android"]
    config = (bundle / "required_operators_and_types.config").read_text()
    assert "Where" in config and "Gather" in config
    assert not any(stage["stage"] == "convert to ORT" and stage["check"]["max_abs_diff"] > 1e-4 for stage in manifest["stages"])
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    web_bundle, _ = target_bundles["web"]
    for text in UNSEEN:
        ids = tokenizer.encode(text).ids
        # the same fine-tuned model (same seed and corpus) in both bundles; one ran through ORT conversion
        assert np.abs(run_onnx(bundle / "model.ort", ids) - run_onnx(web_bundle / "onnx" / "model.onnx", ids)).max() <= 1e-4


def test_transformers_js_runs_a_tail_bundle_as_python_does(target_bundles, tmp_path):
    bundle, _ = target_bundles["web"]
    ids, outputs = transformers_js_outputs(bundle, UNSEEN, ["fp32"], tmp_path)
    for row, text_ids in enumerate(ids):
        assert np.allclose(outputs["fp32"]["values"][row], run_onnx(bundle / "onnx" / "model.onnx", text_ids).ravel(), atol=1e-5)


def test_a_masked_lm_answers_in_original_ids_over_the_kept_rows_only(tmp_path, tiny_full_vocab):
    """--task fill-mask: the head stays over the kept rows (tied to them); its logits come out in the original
    numbering, so the shipped tokenizer decodes them, and a token the head does not cover scores UNCOVERED_LOGIT."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    folder = tmp_path / "mlm"
    shutil.copytree(tiny_full_vocab, folder)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT[:40]) + "\n", encoding="utf-8")
    out, manifest = export(tmp_path / "bundle", corpus, folder, task="fill-mask", quantize="none")
    full = with_rows(AutoModelForMaskedLM.from_pretrained(folder), decoded_matrix(out))
    kept = np.flatnonzero(tail_tables(out)["row_of"].astype(np.int64) < manifest["vocab"]["kept"])
    tokenizer = open_tokenizer(out.parent / "tokenizer.json")
    ids = tokenizer.encode("my order [MASK] never arrived, zebra").ids
    got = run_onnx(out, ids)[0]
    with torch.no_grad():
        want = full(input_ids=torch.tensor([ids])).logits.numpy()[0]
    assert got.shape == (len(ids), 30522)
    assert np.abs(got[:, kept] - want[:, kept]).max() <= 1e-4
    uncovered = np.setdiff1d(np.arange(30522), kept)
    assert np.all(got[:, uncovered] == UNCOVERED_LOGIT)
    assert set(got.argmax(axis=1)) <= set(kept.tolist())


def test_the_same_inputs_give_the_same_bytes(tmp_path, tiny_full_vocab):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT[:30]) + "\n", encoding="utf-8")
    first, _ = export(tmp_path / "a", corpus, tiny_full_vocab, quantize="int8")
    second, _ = export(tmp_path / "b", corpus, tiny_full_vocab, quantize="int8")
    assert first.read_bytes() == second.read_bytes()
    assert (first.parent / "pema-manifest.json").read_bytes() == (second.parent / "pema-manifest.json").read_bytes()


def test_scan_predicts_the_tail_bundle_from_above(tmp_path, tiny_full_vocab):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAINING_TEXT[:30]) + "\n", encoding="utf-8")
    for target, quantize in (("cpu", "none"), ("cpu", "int8")):
        predicted = scan_report(ScanOptions(corpus=[str(corpus)], model=str(tiny_full_vocab), target=target, quantize=quantize,
                                            oov="tail"))["predicted_bytes"]["total"]
        out, _ = export(tmp_path / f"{target}-{quantize}", corpus, tiny_full_vocab, target=target, quantize=quantize)
        written = sum(f.stat().st_size for f in out.parent.rglob("*") if f.is_file() and f.name != "pema-timings.json")
        assert written <= predicted <= written * 1.02, (target, quantize, predicted, written)


def test_what_a_tail_cannot_be_is_one_line_and_nothing_written(tmp_path, tiny_bert, tiny_full_vocab, labelled_corpus):
    everything = sample_head(tmp_path, "app_texts.txt", 483, name="everything.txt")
    for model, corpus, args, message in (
        # tiny_bert's 600-token vocabulary is nearly all used by the whole sample corpus: no codebook to learn
        (tiny_bert, everything, [], "needs at least 256 rows outside the kept vocabulary"),
        (tiny_full_vocab, labelled_corpus, ["--tail-row-bytes", "5"], "do not split into 5 equal slices"),
    ):
        out = tmp_path / "out" / "model.onnx"
        done = run_cli("--corpus", corpus, "--out", out, "--model", model, "--oov", "tail", "--epochs", "1", "--quiet", *args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / "out").exists()


def test_word_dropout_under_the_tail_trains_with_unk_as_a_regulariser(tmp_path, tiny_full_vocab, labelled_corpus):
    """No unseen word becomes UNK in a tail's bundle, but word dropout still regularises (token classification: +1.6-2.7
    points, benchmarks/token_classification.py): it trains, substitutes UNK, and the manifest says so."""
    runs, models = {}, {}
    for rate in ("0", "0.3"):
        out = tmp_path / rate / "model.onnx"
        done = run_cli("--corpus", labelled_corpus, "--out", out, "--model", tiny_full_vocab, "--oov", "tail", "--epochs", "1",
                       "--quiet", "--oov-dropout", rate)
        assert done.returncode == 0, done.stderr
        runs[rate] = json.loads((out.parent / "pema-manifest.json").read_text(encoding="utf-8"))["training"]
        models[rate] = out.read_bytes()
    assert runs["0.3"]["oov_dropout"] == 0.3 and runs["0.3"]["oov_dropout_substitute"] == "UNK"
    assert runs["0"]["oov_dropout"] == 0.0
    assert models["0.3"] != models["0"]  # the substitution changed what it trained on (the same seed otherwise)

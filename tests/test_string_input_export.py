"""--tokenizer in-graph through the pipeline and the CLI: an android .ort that takes strings, its ids exactly
tokenizer.json's on every corpus and held-out text for each family, its outputs the ids-in bundle's; what is refused.

The ids are checked here from the shipped .ort's own input_ids output (per-token models output them) against Python
tokenizers on the shipped tokenizer.json, independently of the export's checks; the outputs against a twin bundle
exported with --tokenizer ids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import sample_head
from pema_export import pipeline
from pema_export.cli import main
from pema_export.pipeline import ExportOptions, run
from pema_export.scan import ScanOptions, scan_report
from pema_export.string_input import check_extensions, session
from pema_export.vocab import open_tokenizer

# words a small corpus never has: under --oov tail they reach the compressed rows
UNSEEN = ["The courier vanished with my lasagne and the receipt", "zebra xylophone quantum harpsichord", "naïve café ÉCOLE ✓"]


def texts(path) -> list[str]:
    return [line.split("\t", 1)[-1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("string-input-texts")
    corpus = sample_head(folder, "search_texts.txt", 100, name="corpus.txt")
    heldout = folder / "heldout.txt"  # plain texts: the --eval file of an encoder
    heldout.write_text("\n".join(texts(sample_head(folder, "heldout.txt", 24))) + "\n", encoding="utf-8")
    return corpus, heldout


def export(folder, model, corpus, heldout=None, **options):
    out = folder / "model.onnx"
    result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(model), eval_file=heldout and str(heldout), **options))
    return out.parent, result.manifest.to_json()


def ids_from_the_graph(bundle, batch: list[str]) -> list[list[int]]:
    """The shipped .ort's own input_ids for ``batch``, real tokens only."""
    ids, mask = session(bundle / "model.ort").run(["input_ids", "attention_mask"], {"text": np.array(batch, dtype=object)})
    return [row[: int(length)].tolist() for row, length in zip(ids, mask.sum(axis=1))]


def assert_ids_are_tokenizer_json(bundle, all_texts: list[str]):
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.enable_truncation(128)
    for start in range(0, len(all_texts), 64):
        batch = all_texts[start : start + 64]
        assert ids_from_the_graph(bundle, batch) == [e.ids for e in tokenizer.encode_batch(batch)]


@pytest.fixture(scope="module")
def android_unk(tmp_path_factory, tiny_full_vocab, files):
    corpus, heldout = files
    options = dict(target="android", oov="unk")  # an encoder (no labels): int8, per-token states
    string_in = export(tmp_path_factory.mktemp("android-in-graph"), tiny_full_vocab, corpus, heldout, tokenizer="in-graph", **options)
    ids_in = export(tmp_path_factory.mktemp("android-ids"), tiny_full_vocab, corpus, **options)
    return string_in, ids_in


def test_an_android_string_in_ort_with_its_operator_config(android_unk):
    (bundle, manifest), _ = android_unk
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "model.ort", "pema-manifest.json",
                                                        "pema-timings.json", "required_operators_and_types.config", "tokenizer.json", "tokenizer_config.json"]
    config = (bundle / "required_operators_and_types.config").read_text(encoding="utf-8").splitlines()
    assert "ai.onnx.contrib;1;BertTokenizer,SentencepieceDecoder,SentencepieceTokenizer" in config
    runner = session(bundle / "model.ort")
    assert [(i.name, i.type) for i in runner.get_inputs()] == [("text", "tensor(string)")]
    assert [o.name for o in runner.get_outputs()] == ["last_hidden_state", "input_ids", "attention_mask"]
    assert manifest["target"]["tokenizer"] == "in-graph" and manifest["heldout"]["model"] == "model.ort"
    convert = next(stage for stage in manifest["stages"] if stage["stage"] == "convert to ORT")
    assert convert["custom_op_library"] == "onnxruntime-extensions" and convert["check"]["min_cosine"] >= 0.98


def test_its_ids_are_tokenizer_json_s_on_every_corpus_and_heldout_text(android_unk, files):
    (bundle, manifest), _ = android_unk
    corpus, heldout = files
    assert_ids_are_tokenizer_json(bundle, texts(corpus) + texts(heldout) + UNSEEN)
    record = manifest["string_input"]
    assert record["family"] == "WordPiece" and record["custom_ops"] == {"ai.onnx.contrib": ["BertTokenizer", "SentencepieceDecoder", "SentencepieceTokenizer"]}
    (checked,) = record["models"]
    assert checked["file"] == "model.ort"
    assert checked["fidelity"]["corpus_texts"] == len(texts(corpus)) and checked["fidelity"]["heldout_texts"] == len(texts(heldout))
    assert checked["fidelity"]["mismatches"] == 0 and checked["parity"]["max_abs_diff"] == 0.0
    assert record["outputs_added"] == ["input_ids", "attention_mask"] and record["offsets"].startswith("not produced")


def test_it_answers_as_the_ids_in_bundle_does(android_unk, files):
    """The same export with --tokenizer ids: its .ort on tokenizers' ids, the string-in .ort on the texts."""
    (string_bundle, _), (ids_bundle, _) = android_unk
    assert (string_bundle / "tokenizer.json").read_bytes() == (ids_bundle / "tokenizer.json").read_bytes()
    tokenizer = open_tokenizer(ids_bundle / "tokenizer.json")
    with_ids = session(ids_bundle / "model.ort")
    with_text = session(string_bundle / "model.ort")
    for text in texts(files[1])[:20] + UNSEEN:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        want = with_ids.run(["last_hidden_state"], feeds)[0]
        got = with_text.run(["last_hidden_state"], {"text": np.array([text], dtype=object)})[0]
        np.testing.assert_array_equal(got, want)


def test_scan_predicts_the_string_in_bundle_from_above(android_unk, files, tiny_full_vocab):
    (bundle, _), (ids_bundle, _) = android_unk
    options = dict(corpus=[str(files[0])], model=str(tiny_full_vocab), target="android", oov="unk")
    predicted = scan_report(ScanOptions(**options, tokenizer="in-graph"))["predicted_bytes"]["total"]
    without = scan_report(ScanOptions(**options))["predicted_bytes"]["total"]
    shipped = lambda folder: sum(f.stat().st_size for f in folder.iterdir() if f.name != "pema-timings.json")  # noqa: E731
    written = shipped(bundle)
    added = written - shipped(ids_bundle)
    assert written <= predicted <= written + 8_000, (predicted, written)
    assert added <= predicted - without <= added + 8_000, (predicted - without, added)


def test_tail_the_graph_takes_original_ids_and_decodes_the_rest(tmp_path, tiny_bert, files):
    """--oov tail: the original tokenizer in the graph; words the corpus never had reach their compressed rows, and
    the .ort answers as the ids-in fp32 graph of the same export does on tokenizers' original ids. (tiny_bert's
    600-token vocabulary and a few corpus texts leave a few hundred tail rows: the codebook is learned in a second.)"""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts(files[0])[:4]) + "\n", encoding="utf-8")
    heldout = files[1]
    options = dict(oov="tail", quantize="none")
    bundle, manifest = export(tmp_path / "android", tiny_bert, corpus, heldout, target="android", tokenizer="in-graph", **options)
    twin, _ = export(tmp_path / "cpu-ids", tiny_bert, corpus, target="cpu", **options)
    assert open_tokenizer(bundle / "tokenizer.json").get_vocab() == open_tokenizer(tiny_bert / "tokenizer.json").get_vocab()
    assert_ids_are_tokenizer_json(bundle, texts(corpus) + texts(heldout) + UNSEEN)
    assert manifest["string_input"]["models"][0]["fidelity"]["mismatches"] == 0 and manifest["vocab"]["tail"]["rows"] >= 256
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    corpus_ids = {i for encoding in tokenizer.encode_batch(texts(corpus)) for i in encoding.ids}
    with_ids, with_text = session(twin / "model.onnx"), session(bundle / "model.ort")
    for text in UNSEEN:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        assert set(ids[0].tolist()) - corpus_ids  # the text reaches rows the corpus never used: the compressed tail
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        want = with_ids.run(["last_hidden_state"], feeds)[0]
        got = with_text.run(["last_hidden_state"], {"text": np.array([text], dtype=object)})[0]
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("family, fixture, ops", [
    ("BPE", "tiny_roberta", "GPT2Tokenizer"),
    ("Unigram", "tiny_xlmr_sentencepiece", "SentencepieceTokenizer"),
])
def test_every_family_ships_an_exact_string_in_ort(request, tmp_path, files, family, fixture, ops):
    corpus, heldout = files
    bundle, manifest = export(tmp_path, request.getfixturevalue(fixture), corpus, heldout, target="android", oov="unk", tokenizer="in-graph")
    assert manifest["string_input"]["family"] == family
    assert f"ai.onnx.contrib;1;{ops}" in (bundle / "required_operators_and_types.config").read_text(encoding="utf-8").splitlines()
    assert_ids_are_tokenizer_json(bundle, texts(corpus) + texts(heldout) + UNSEEN)
    fidelity = manifest["string_input"]["models"][0]["fidelity"]
    assert (fidelity["corpus_texts"], fidelity["heldout_texts"], fidelity["mismatches"]) == (len(texts(corpus)), len(texts(heldout)), 0)


def refused(capsys, tmp_path, *args) -> str:
    """Run the CLI (logging on: a refusal before any work prints nothing else); one line, exit 2, nothing written."""
    out = tmp_path / "out" / "model.onnx"
    before = sorted(tmp_path.rglob("*"))
    assert main([*map(str, args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pema-export: error: "), err
    assert sorted(tmp_path.rglob("*")) == before
    return err[0]


def test_the_web_target_is_refused_in_one_line(capsys, tmp_path, tiny_bert, files):
    line = refused(capsys, tmp_path, "--model", tiny_bert, "--corpus", files[0], "--target", "web", "--tokenizer", "in-graph")
    assert "transformers.js tokenizes in JavaScript already" in line


@pytest.mark.parametrize("fixture, named", [
    ("tiny_albert", "Lowercase"),  # ALBERT lowercases and strips accents before its SentencePiece charsmap
    ("tiny_xlm_roberta", "needs one"),  # a Unigram trained with tokenizers: no SentencePiece .model to run
])
def test_a_tokenizer_feature_the_ops_cannot_express_is_refused_before_any_work(capsys, tmp_path, request, files, monkeypatch, fixture, named):
    monkeypatch.setattr(pipeline, "scan_vocabulary", lambda *a, **k: pytest.fail("scanned the corpus before refusing"))
    line = refused(capsys, tmp_path, "--model", request.getfixturevalue(fixture), "--corpus", files[0], "--target", "android",
                   "--tokenizer", "in-graph")
    assert named in line


def test_an_onnxruntime_extensions_that_cannot_be_loaded_is_one_line(capsys, tmp_path, tiny_bert, files, monkeypatch):
    import onnxruntime_extensions

    not_a_library = tmp_path / "not-a-library.so"
    not_a_library.write_bytes(b"\x7fELF but not really")
    monkeypatch.setattr(onnxruntime_extensions, "get_library_path", lambda: str(not_a_library))
    check_extensions.cache_clear()
    try:
        line = refused(capsys, tmp_path, "--model", tiny_bert, "--corpus", files[0], "--target", "ios", "--tokenizer", "in-graph")
    finally:
        monkeypatch.undo()
        check_extensions.cache_clear()
    assert "cannot be loaded into onnxruntime" in line


def test_a_profile_may_ask_for_it_and_the_web_format_never_takes_it(tmp_path):
    from pema_export.errors import TargetError
    from pema_export.profiles import load_target

    profile = tmp_path / "phone.toml"
    profile.write_text('name = "phone"\nformat = "ort"\nquantize = "int8"\ntokenizer = "in-graph"\n', encoding="utf-8")
    assert load_target(str(profile)).tokenizer == "in-graph" and load_target(str(profile), tokenizer="ids").tokenizer == "ids"
    assert load_target("ios", tokenizer="in-graph").as_manifest()["tokenizer"] == "in-graph"
    assert "tokenizer" not in load_target("ios").as_manifest()  # bundles with the default keep their manifest bytes
    profile.write_text('name = "phone"\nformat = "ort"\nquantize = "int8"\ntokenizer = "graph"\n', encoding="utf-8")
    with pytest.raises(TargetError, match="tokenizer = 'graph' must be one of ids, in-graph"):
        load_target(str(profile))
    with pytest.raises(TargetError, match="transformers.js tokenizes in JavaScript already"):
        load_target("web", tokenizer="in-graph")

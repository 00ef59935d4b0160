"""Every bad input: one line on stderr, exit code 2, nothing written, any earlier bundle left intact."""

import json
from pathlib import Path

import pytest

from pema_export import pipeline, verify
from pema_export.cli import main
from pema_export.errors import VerificationError

import bad_inputs
from conftest import run_cli, save_tiny_model


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def assert_refused(capsys, tmp_path, pattern: str, *args, out: Path | None = None):
    out = out or tmp_path / "out" / "model.onnx"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, line = run(capsys, *args, "--out", out, "--quiet")
    assert code == 2
    assert line.startswith("pema-export: error: ")
    assert __import__("re").search(pattern, line), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no staging left


def corpus(tmp_path, text: str | bytes, name="c.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_missing_corpus(capsys, tmp_path, tiny_bert):
    assert_refused(capsys, tmp_path, "corpus file not found", "--model", tiny_bert, "--corpus", tmp_path / "none.txt")


def test_empty_corpus(capsys, tmp_path, tiny_bert):
    assert_refused(capsys, tmp_path, "corpus file is empty", "--model", tiny_bert, "--corpus", corpus(tmp_path, ""))


def test_corpus_without_texts(capsys, tmp_path, tiny_bert):
    assert_refused(capsys, tmp_path, "no texts after parsing", "--model", tiny_bert, "--corpus", corpus(tmp_path, "\n \n"))


def test_single_class_labels(capsys, tmp_path, tiny_bert):
    path = corpus(tmp_path, "refund\tmoney back\nrefund\trefund me\n")
    assert_refused(capsys, tmp_path, "single label 'refund'", "--model", tiny_bert, "--corpus", path)


def test_non_utf8_corpus_names_file_and_line(capsys, tmp_path, tiny_bert):
    path = corpus(tmp_path, b"a\thello\nb\t\xe9t\xe9\n", name="latin1.txt")
    assert_refused(capsys, tmp_path, r"latin1.txt line 2 is not UTF-8", "--model", tiny_bert, "--corpus", path)


def test_unknown_model_offline(capsys, tmp_path):
    path = corpus(tmp_path, "hello\n")
    assert_refused(capsys, tmp_path, "cannot download no-such-org/no-such-model|unknown model",
                   "--model", "no-such-org/no-such-model", "--corpus", path)


def test_missing_model_folder(capsys, tmp_path):
    assert_refused(capsys, tmp_path, "model folder not found", "--model", tmp_path / "nope", "--corpus", corpus(tmp_path, "hi\n"))


def test_unsupported_tokenizer_family(capsys, tmp_path, tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    model = save_tiny_model(tmp_path_factory.mktemp("wordlevel"), "bert", tokenizer)
    assert_refused(capsys, tmp_path, "tokenizer family WordLevel is not supported", "--model", model, "--corpus", corpus(tmp_path, "hello\n"))


def test_model_without_fast_tokenizer(capsys, tmp_path, tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow-only")
    (folder / "config.json").write_text((tiny_bert / "config.json").read_text())
    assert_refused(capsys, tmp_path, "no tokenizer.json", "--model", folder, "--corpus", corpus(tmp_path, "hello\n"))


def test_out_that_cannot_be_written(capsys, tmp_path, tiny_bert):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert_refused(capsys, tmp_path, "cannot write", "--model", tiny_bert, "--corpus", corpus(tmp_path, "hi\n"),
                   out=blocker / "model.onnx")
    assert_refused(capsys, tmp_path, "must end in .onnx", "--model", tiny_bert, "--corpus", corpus(tmp_path, "hi\n"),
                   out=tmp_path / "model.bin")


def test_unknown_target(capsys, tmp_path, tiny_bert):
    assert_refused(capsys, tmp_path, "unknown target 'toaster'", "--model", tiny_bert, "--corpus", corpus(tmp_path, "hi\n"),
                   "--target", "toaster")


@pytest.mark.parametrize("args, message", [
    (["--min-count", "0"], "--min-count must be at least 1"),
    (["--max-vocab", "0"], "--max-vocab must be at least 1"),
    (["--prior-words", "0"], "--prior-words must be at least 1"),
])
def test_scan_checks_the_shared_options_as_the_export_does(capsys, tmp_path, tiny_bert, args, message):
    code, line = run(capsys, "scan", "--model", tiny_bert, "--corpus", corpus(tmp_path, "hello\n"), *args)
    assert (code, line) == (2, f"pema-export: error: {message}")
    assert_refused(capsys, tmp_path, message, "--model", tiny_bert, "--corpus", corpus(tmp_path, "hello\n"), *args)


def test_failed_verification_keeps_the_earlier_bundle(capsys, tmp_path, tiny_bert, monkeypatch):
    texts = corpus(tmp_path, "where is my order\nrefund please\n")
    out = tmp_path / "bundle" / "model.onnx"
    assert run(capsys, "--model", tiny_bert, "--corpus", texts, "--out", out, "--quiet")[0] == 0
    good = {p.name: p.read_bytes() for p in out.parent.iterdir()}

    def broken(*args, **kwargs):
        raise VerificationError("output parity failed on corpus text 'refund please': logits differs by 1 > 0.0001")

    monkeypatch.setattr(pipeline, "parity_and_reference", broken)
    code, line = run(capsys, "--model", tiny_bert, "--corpus", corpus(tmp_path, "something else entirely\n", "d.txt"),
                     "--out", out, "--quiet")
    assert code == 2 and "output parity failed on corpus text 'refund please'" in line
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == good


def test_real_parity_failure_is_caught(tmp_path, tiny_bert):
    """A graph that really differs from its reference must fail verification, naming the text."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    out = tmp_path / "b" / "model.onnx"
    # fp32 (--quantize none): the check below perturbs the float word-embedding table
    assert main(["--model", str(tiny_bert), "--corpus", str(corpus(tmp_path, "where is my order\n")), "--out", str(out),
                 "--quantize", "none", "--quiet"]) == 0
    good = ort.InferenceSession(str(out))

    def reference(input_ids, attention_mask):
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                 "token_type_ids": np.zeros_like(input_ids.numpy())}
        return {"last_hidden_state": good.run(["last_hidden_state"], feeds)[0]}

    tokenizer = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    assert verify.check_parity(out, reference, tokenizer, ["where is my order"], pad_id=0).max_abs_diff == 0.0
    graph = onnx.load(str(out))
    for init in graph.graph.initializer:
        if init.name.endswith("word_embeddings.weight"):
            # noise, not a constant: the LayerNorm after the embedding would cancel a constant shift
            weights = numpy_helper.to_array(init)
            noise = np.random.default_rng(0).normal(0, 0.05, weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
    onnx.save(graph, str(out))
    with pytest.raises(VerificationError, match="where is my order"):
        verify.check_parity(out, reference, tokenizer, ["where is my order"], pad_id=0)


# --- Every option of every subcommand, with a bad value (issue 15): the cases are in bad_inputs.py -----------------

def test_every_option_of_every_subcommand_has_a_bad_value_to_try():
    untried = bad_inputs.untried_options()
    assert not untried, f"add bad values to bad_inputs.BAD_VALUES for: {', '.join(untried)}"


def _listing(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for folder in folders for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", bad_inputs.cases(), ids=lambda case: case.id)
def test_a_bad_value_is_one_error_line_exit_2_and_nothing_written(case, capsys, tmp_path, tiny_bert, tiny_bundle, labelled_corpus):
    inputs = bad_inputs.make_inputs(tmp_path, tiny_bert, tiny_bundle)
    out = tmp_path / "out" / "model.onnx"
    argv = bad_inputs.argv(case, inputs, tiny_bert, tiny_bundle, out, labelled_corpus)
    before = _listing(tmp_path, tiny_bundle)
    code = main(argv)  # an exception escaping main is the traceback a user would see: the test fails on it
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, (argv, captured.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("pema-export: error: "), captured.err
    assert captured.out == ""
    assert _listing(tmp_path, tiny_bundle) == before, "the failed run wrote or left something"


def test_the_console_script_prints_only_the_error_line_for_argument_errors(tmp_path):
    """argparse's own errors (a bad choice, a bad number, a missing argument): one line, not the usage block first."""
    for args, message in ((["--corpus", "x.txt", "--out", "m.onnx", "--oov", "bogus"], "argument --oov: invalid choice: 'bogus'"),
                          (["scan", "--corpus", "x.txt", "--epochs", "3"], "scan: unrecognized arguments: --epochs 3"),
                          (["size"], "size: the following arguments are required: BUNDLE_DIR")):
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.splitlines() == [f"pema-export: error: {message}{done.stderr.split(message, 1)[1].rstrip()}"]
        assert "usage:" not in done.stderr and "Traceback" not in done.stderr


# --- Corpora from outside (bad_inputs.corpus_files): random bytes, mixed encodings, huge lines, a mismatched layout

def _fuzz_settings():
    from hypothesis import HealthCheck, settings

    # derandomized: the same examples on every run, so a failure here is a failure everywhere
    return settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fuzz(test):
    from hypothesis import example, given

    for content, suffix in bad_inputs.FIXED_CORPORA:
        test = example((content, suffix))(test)
    return _fuzz_settings()(given(bad_inputs.corpus_files())(test))


@_fuzz
def test_any_corpus_gives_a_verified_bundle_or_one_error_line(tmp_path, capsys, tiny_bert, corpus):
    """No traceback, whatever the file holds: the export writes a bundle that passed verification, or says in one
    line why not and writes nothing."""
    import shutil
    import tempfile

    from pema_export.bundle import check_complete

    content, suffix = corpus
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / f"corpus{suffix}"
    path.write_bytes(content)
    out = folder / "out" / "model.onnx"
    code = main(["--model", str(tiny_bert), "--corpus", str(path), "--out", str(out), "--epochs", "1", "--quantize", "none",
                 "--quiet"])  # an exception escaping main is a traceback: hypothesis reports it with the corpus
    err = capsys.readouterr().err
    if code == 0:
        manifest = json.loads((out.parent / "pema-manifest.json").read_text())
        assert manifest["parity"]["tokenization_mismatches"] == 0 and manifest["parity"]["max_abs_diff"] <= 1e-4
        check_complete(out.parent)
    else:
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("pema-export: error: "), err
        assert not out.parent.exists(), "a refused corpus left files behind"
    shutil.rmtree(folder)


# --- Error paths of the model itself (issue 15: untested until now) ----------------------------------------------

def test_an_unknown_sentence_transformers_pooling_mode_is_one_line(capsys, tmp_path, tiny_sentence_encoder):
    import shutil

    model = shutil.copytree(tiny_sentence_encoder, tmp_path / "max-pooling")
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    assert_refused(capsys, tmp_path, r"sentence-transformers pooling \['pooling_mode_max_tokens'\] .* is not supported \(mean or cls only\)",
                   "--model", model, "--corpus", corpus(tmp_path, "where is my order\n"))


def test_fill_mask_refuses_an_output_projection_not_tied_to_the_input_embedding(capsys, tmp_path, wordpiece_tokenizer):
    from conftest import ELECTRA_TOKENIZER_CONFIG, TINY_SIZES, save_tiny_family_model

    model = save_tiny_family_model(tmp_path / "untied-mlm", "bert", ELECTRA_TOKENIZER_CONFIG, wordpiece_tokenizer, head="mlm",
                                   tie_word_embeddings=False, pad_token_id=0, **TINY_SIZES)
    assert_refused(capsys, tmp_path, "has no .* tied to its input embedding; --task fill-mask needs one",
                   "--model", model, "--corpus", corpus(tmp_path, "where is my order\n"), "--task", "fill-mask", "--oov", "unk")


def test_an_input_embedding_that_is_not_nn_embedding_is_named(tiny_bert):
    import torch
    from transformers import AutoModel

    from pema_export.errors import ModelError
    from pema_export.pema import input_embedding

    model = AutoModel.from_pretrained(tiny_bert)
    model.set_input_embeddings(torch.nn.EmbeddingBag(10, 32))
    with pytest.raises(ModelError, match="the input embedding is EmbeddingBag, not torch.nn.Embedding"):
        input_embedding(model)


# Token classification (issue 13): each bad tagged corpus is one line naming the file and line, exit 2, nothing written.
TAGGED = "Where\tO\nis\tO\norder\tO\n#A58213\tB-ORDER_ID\n\nship\tO\nto\tO\nLyon\tB-CITY\n"


@pytest.mark.parametrize("name, content, message", [
    ("bad-bio.conll", TAGGED.replace("Lyon\tB-CITY", "Lyon\tI-CITY"),
     r"bad-bio.conll line 8: tag 'I-CITY' follows 'O', which is not valid BIO \(IOB2\): an entity starts with B-CITY"),
    ("bad-bio.jsonl", '{"tokens": ["fly", "to", "New", "York"], "tags": ["O", "O", "B-CITY", "I-DATE"]}\n',
     r"bad-bio.jsonl line 1, token 4 \('York'\): tag 'I-DATE' follows 'B-CITY', which is not valid BIO"),
    ("lengths.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["fly", "to", "Oslo"], "tags": ["O", "B-CITY"]}\n',
     r"lengths.jsonl line 2: 3 tokens but 2 tags"),
    ("outside.jsonl", '{"text": "ship to Lyon", "entities": [{"start": 8, "end": 12, "label": "CITY"}]}\n'
                      '{"text": "ship to Oslo", "entities": [{"start": 8, "end": 14, "label": "CITY"}]}\n',
     r"outside.jsonl line 2: entity 'CITY' at 8-14 is outside its text \(12 characters"),
    ("overlap.jsonl", '{"text": "order 12 to Lyon", "entities": [{"start": 0, "end": 8, "label": "ORDER_ID"}, '
                      '{"start": 6, "end": 16, "label": "CITY"}]}\n',
     r"overlap.jsonl line 1: entity 'CITY' at 6-16 overlaps entity 'ORDER_ID' at 0-8"),
    ("bioes.conll", TAGGED.replace("Lyon\tB-CITY", "Lyon\tS-CITY"),
     r"bioes.conll line 8: tag 'S-CITY' \(a BIOES/IOBES tag\) is not in the IOB2 label scheme"),
    ("bare.conll", TAGGED.replace("#A58213\tB-ORDER_ID", "#A58213\tORDER_ID"),
     r"bare.conll line 4: tag 'ORDER_ID' is not in the IOB2 label scheme"),
    ("bioes.txt", TAGGED.replace("order\tO", "order\tE-X"),  # a tagged .txt is read as CoNLL, its scheme named
     r"bioes.txt line 3: tag 'E-X' \(a BIOES/IOBES tag\) is not in the IOB2 label scheme"),
])
def test_bad_tagged_corpus_names_file_and_line(capsys, tmp_path, tiny_bert, name, content, message):
    assert_refused(capsys, tmp_path, message, "--model", tiny_bert, "--corpus", corpus(tmp_path, content, name))


def test_conll_sentence_over_max_length_says_how_many_pieces(capsys, tmp_path, tiny_bert):
    long_sentence = "".join(f"word{i}\tO\n" for i in range(30)) + "Lyon\tB-CITY\n"
    path = corpus(tmp_path, TAGGED + "\n" + long_sentence, "long.conll")
    assert_refused(capsys, tmp_path, r"long.conll line 10: the sentence is \d+ pieces \(special tokens included\), over "
                   r"--max-length 24; its last words would lose their labels", "--model", tiny_bert, "--corpus", path,
                   "--max-length", "24")

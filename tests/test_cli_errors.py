"""Every bad input: one line on stderr, exit code 2, nothing written, any earlier bundle left intact."""

import json
from pathlib import Path

import pytest

from pema_export import pipeline, verify
from pema_export.cli import main
from pema_export.errors import VerificationError
from conftest import save_tiny_model


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

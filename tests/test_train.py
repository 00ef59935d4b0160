"""The fine-tuning loop and the bad inputs a labelled corpus can bring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TRAINING_TEXT, run_cli
from pema_export.corpus import read_corpus
from pema_export.errors import CorpusError, PemaError
from pema_export.models import ModelSource
from pema_export.pema import load_partial_model, map_ids
from pema_export.tasks import TASKS
from pema_export.devices import resolve_placement
from pema_export.train import EncodedSet, TrainOptions, fine_tune, labels_seen_once, split_held_out
from pema_export.vocab import KeptVocab, open_tokenizer


def test_split_is_stratified_and_keeps_a_label_seen_once_in_training():
    labels = ["a"] * 20 + ["b"] * 10 + ["once"]
    train, held_out = split_held_out(labels, 0.2, seed=0)
    assert sorted(train + held_out) == list(range(len(labels)))
    assert [labels[i] for i in held_out].count("a") == 4 and [labels[i] for i in held_out].count("b") == 2
    assert labels.index("once") in train
    assert labels_seen_once(labels) == ["once"]
    assert split_held_out(labels, 0.2, seed=0) == (train, held_out)
    assert split_held_out(labels, 0.2, seed=1) != (train, held_out)


def test_an_empty_held_out_split_is_one_clear_error():
    with pytest.raises(CorpusError, match="held-out split would be empty.*--eval FILE"):
        split_held_out(["a", "b", "c", "a"], 0.1, seed=0)


@pytest.mark.parametrize("suffix, content", [
    (".csv", "text,label\nhello there,1\nmy order is late,late\n"),
    (".txt", "1\thello there\nlate\tmy order is late\n"),
])
def test_integer_and_word_labels_mixed_in_a_text_format_are_an_error(tmp_path, suffix, content):
    path = tmp_path / f"mixed{suffix}"
    path.write_text(content)
    with pytest.raises(CorpusError, match="line 2?3?: label 'late' is not an integer.*mixed label types"):
        list(read_corpus([path]))
    path.write_text(content.replace(",1\n", ",early\n").replace("1\thello", "early\thello"))
    assert [e.label for e in read_corpus([path])] == ["early", "late"]


def test_device_must_exist():
    assert resolve_placement("cpu", environ={}).device == torch.device("cpu")
    with pytest.raises(PemaError, match="--device gpu: unknown device"):
        resolve_placement("gpu", environ={})
    if torch.cuda.is_available():
        assert resolve_placement("cuda", environ={}).device.type == "cuda"
    else:
        with pytest.raises(PemaError, match="--device cuda: .*use --device cpu"):
            resolve_placement("cuda", environ={})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_device_cuda_without_a_gpu_exits_2_before_any_work(tmp_path, labelled_corpus):
    result = run_cli("--corpus", labelled_corpus, "--out", tmp_path / "b" / "model.onnx", "--device", "cuda")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--device cuda" in result.stderr
    assert not (tmp_path / "b").exists()


def tiny_training(tiny_bert, seed: int, epochs: int = 6, lr: float = 2e-3, n: int = 128, n_eval: int = 32,
                  precision: str = "fp32"):
    """A learnable rule on sample texts: a text is "yes" when it starts with the word "urgent" (every other one does).

    With the defaults (96 texts to train on, 32 held out, 6 epochs at 2e-3) held-out accuracy was 1.0 for each of
    seeds 0-7 (measured); with 32 texts, or 4 epochs at 5e-3, some seeds stayed at the majority answer (0.5)."""
    tokenizer = open_tokenizer(tiny_bert / "tokenizer.json")
    labels = [i % 2 for i in range(n)]
    texts = [("urgent " if label else "") + text for text, label in zip(TRAINING_TEXT[:n], labels)]
    ids = [enc.ids for enc in tokenizer.encode_batch(texts)]
    original_size = json.loads((tiny_bert / "config.json").read_text())["vocab_size"]
    kept = KeptVocab(np.unique(np.concatenate([np.arange(5), *map(np.asarray, ids)])), original_size, unk_id=1)
    encoded = [map_ids(kept, np.asarray(seq)).tolist() for seq in ids]
    partial = load_partial_model(ModelSource("tiny", tiny_bert, None), kept, TASKS["text-classification"], labels=["no", "yes"], seed=seed)
    options = TrainOptions(epochs=epochs, lr=lr, batch_size=8, seed=seed, precision=precision)
    report = fine_tune(partial.model, EncodedSet(encoded[:n - n_eval], labels[:n - n_eval]),
                       EncodedSet(encoded[n - n_eval:], labels[n - n_eval:]), 0, options)
    return partial.model, report


def test_fine_tuning_learns_a_rule_an_untrained_model_does_not_know(tiny_bert):
    _, untrained = tiny_training(tiny_bert, seed=7, epochs=1, lr=1e-12)  # the same model and loop, no real step
    _, trained = tiny_training(tiny_bert, seed=7)
    assert untrained.eval_accuracy < 0.75  # a balanced held-out set: chance is 0.5
    assert trained.eval_accuracy >= 0.9 and trained.eval_accuracy_per_epoch[-1] == trained.eval_accuracy
    assert len(trained.eval_accuracy_per_epoch) == 6 and trained.train_size == 96 and trained.eval_size == 32


def test_fine_tuning_is_reproducible_from_the_seed(tiny_bert):
    first, _ = tiny_training(tiny_bert, seed=7, epochs=2, n=48, n_eval=16)
    again, _ = tiny_training(tiny_bert, seed=7, epochs=2, n=48, n_eval=16)
    other, _ = tiny_training(tiny_bert, seed=8, epochs=2, n=48, n_eval=16)
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


def test_cli_save_full_writes_a_full_vocabulary_checkpoint_beside_the_bundle(tmp_path, tiny_bert, labelled_corpus):
    from transformers import AutoModelForSequenceClassification

    with labelled_corpus.open("a") as handle:
        handle.write("rare_label\tthis label has a single text\n")
    full_dir = tmp_path / "full"
    result = run_cli("--model", tiny_bert, "--corpus", labelled_corpus, "--out", tmp_path / "b" / "model.onnx",
                     "--epochs", "1", "--save-full", full_dir)
    assert result.returncode == 0, result.stderr
    assert "single text are trained on but not held out: 'rare_label'" in result.stderr
    manifest = json.loads((tmp_path / "b" / "pema-manifest.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(full_dir)
    assert model.config.vocab_size == manifest["vocab"]["original"] > manifest["vocab"]["kept"]
    assert sorted(model.config.id2label.values()) == manifest["training"]["labels"] and "rare_label" in manifest["training"]["labels"]
    assert (full_dir / "tokenizer.json").read_bytes() == (tiny_bert / "tokenizer.json").read_bytes()

    again = run_cli("--model", tiny_bert, "--corpus", labelled_corpus, "--out", tmp_path / "c" / "model.onnx",
                    "--save-full", full_dir)
    assert again.returncode == 2 and "--save-full" in again.stderr and "not an empty folder" in again.stderr
    assert not (tmp_path / "c").exists()


"""The partial embedding: sliced loading, equivalence with full-vocabulary fine-tuning, and merge-back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TRAINING_TEXT
from pema_export.errors import ModelError, OutputError
from pema_export.models import ModelSource, resolve_model
from pema_export.pema import find_safetensors, load_partial_model, map_ids, save_full_model
from pema_export.tasks import TASKS
from pema_export.train import EncodedSet, TrainOptions, fine_tune
from pema_export.vocab import KeptVocab, choose_kept_ids, count_tokens, open_tokenizer, special_token_ids, unk_token_id

LABELS = ["a", "b", "c"]
CLASSIFIER = TASKS["text-classification"]


def kept_for(folder: Path, texts: list[str]) -> KeptVocab:
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    counts = count_tokens(open_tokenizer(folder / "tokenizer.json"), texts)
    return choose_kept_ids(
        counts, special_token_ids(tokenizer_json, config), unk_token_id(tokenizer_json), original_size=config["vocab_size"]
    )


def encode(folder: Path, texts: list[str]) -> list[list[int]]:
    tokenizer = open_tokenizer(folder / "tokenizer.json")
    return [enc.ids for enc in tokenizer.encode_batch(texts)]


def source(folder: Path) -> ModelSource:
    return ModelSource(name=folder.name, path=folder, pooling=None)


def full_classifier(folder: Path, head_from: torch.nn.Module):
    """Full-vocabulary fine-tuning as a user does it: from_pretrained, with the same fresh head as the PEMA side."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(LABELS))
    model.classifier.load_state_dict(head_from.classifier.state_dict())
    return model


@torch.no_grad()
def logits(model, ids: list[list[int]]) -> np.ndarray:
    from pema_export.train import pad_batch

    model.eval()
    input_ids, attention_mask = pad_batch(ids, pad_id=0)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.numpy()


@pytest.fixture(scope="module")
def corpus():
    texts = TRAINING_TEXT[:96]
    return texts[:72], texts[72:]  # train, held out


def test_sliced_load_gives_the_full_models_outputs_on_in_vocabulary_input(tiny_bert, corpus):
    texts = corpus[0] + corpus[1]
    kept = kept_for(tiny_bert, texts)
    assert kept.size < kept.original_size
    partial = load_partial_model(source(tiny_bert), kept, CLASSIFIER, labels=LABELS)
    full = full_classifier(tiny_bert, partial.model)
    ids = encode(tiny_bert, texts)
    new_ids = [map_ids(kept, np.asarray(seq)).tolist() for seq in ids]
    assert np.abs(logits(full, ids) - logits(partial.model, new_ids)).max() == 0.0
    assert partial.model.get_input_embeddings().weight.shape == (kept.size, 32)
    assert partial.original_embedding_params == kept.original_size * 32
    assert partial.original_params == sum(p.numel() for p in full.parameters())


def test_fresh_head_depends_only_on_the_seed(tiny_bert, corpus):
    kept = kept_for(tiny_bert, corpus[0])
    other_kept = kept_for(tiny_bert, corpus[1])  # another vocabulary must not change the head
    first = load_partial_model(source(tiny_bert), kept, CLASSIFIER, labels=LABELS, seed=3).model.classifier.weight
    again = load_partial_model(source(tiny_bert), other_kept, CLASSIFIER, labels=LABELS, seed=3).model.classifier.weight
    other = load_partial_model(source(tiny_bert), kept, CLASSIFIER, labels=LABELS, seed=4).model.classifier.weight
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("layout", ["classifier-checkpoint", "sharded", "pytorch-bin"])
def test_other_checkpoint_layouts_load_the_same_model(tiny_bert, corpus, tmp_path, layout):
    from transformers import AutoModelForSequenceClassification

    # A classifier checkpoint stores "bert."-prefixed names; the tiny_bert fixture (like a sentence-transformers
    # folder) stores them without the prefix.
    folder = tmp_path / layout
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=len(LABELS))
    if layout == "classifier-checkpoint":
        model.save_pretrained(folder)
    elif layout == "sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
        assert (folder / "model.safetensors.index.json").is_file()
    else:
        model.save_pretrained(folder, safe_serialization=False)
        assert find_safetensors(folder) is None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    kept = kept_for(tiny_bert, corpus[0])
    partial = load_partial_model(source(folder), kept, CLASSIFIER, labels=LABELS)
    ids = encode(tiny_bert, corpus[0][:8])  # texts the kept vocabulary was counted on
    new_ids = [map_ids(kept, np.asarray(seq)).tolist() for seq in ids]
    reference, got = logits(model, ids), logits(partial.model, new_ids)
    # The checkpoint already has a 3-label head, so it is loaded rather than initialised.
    assert np.abs(reference - got).max() == 0.0


def test_checkpoint_missing_an_encoder_weight_is_a_clear_error(tiny_bert, corpus, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    state = load_file(tiny_bert / "model.safetensors")
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="encoder.layer.1.output.dense.weight"):
        load_partial_model(source(folder), kept_for(tiny_bert, corpus[0]), CLASSIFIER, labels=LABELS)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_loading_never_reads_the_dropped_embedding_rows(tmp_path):
    # A tiny encoder with a 400k-row embedding (49 MB): loading 1,000 rows must not raise the peak RSS by more than
    # a fraction of it, while reading the whole matrix (the control, so this test can fail) raises it by all of it.
    from transformers import BertConfig, BertModel

    folder = tmp_path / "big-vocab"
    config = BertConfig(vocab_size=400_000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertModel(config).save_pretrained(folder)
    script = textwrap.dedent(f"""
        import json, re, numpy as np
        from pathlib import Path
        from pema_export.models import ModelSource
        from pema_export.pema import find_safetensors, load_partial_model
        from pema_export.tasks import TASKS
        from pema_export.vocab import KeptVocab

        CLASSIFIER = TASKS["text-classification"]

        def reset_peak():
            Path("/proc/self/clear_refs").write_text("5")

        def peak_mb():
            return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024

        folder = Path({str(folder)!r})
        source = ModelSource("big", folder, None)
        load_partial_model(source, KeptVocab(np.arange(10), 400_000, None), CLASSIFIER, labels=["x", "y"])  # imports, caches
        kept = KeptVocab(np.unique(np.r_[0, np.random.default_rng(0).integers(0, 400_000, 1000)]), 400_000, None)
        reset_peak(); before = peak_mb()
        partial = load_partial_model(source, kept, CLASSIFIER, labels=["x", "y"])
        sliced = peak_mb() - before
        reset_peak(); before = peak_mb()
        whole = find_safetensors(folder).read("embeddings.word_embeddings.weight")
        print(json.dumps({{"sliced_mb": sliced, "whole_mb": peak_mb() - before}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grown = json.loads(result.stdout.strip().splitlines()[-1])
    embedding_mb = 400_000 * 32 * 4 / 2**20
    assert grown["whole_mb"] > 0.9 * embedding_mb
    assert grown["sliced_mb"] < embedding_mb / 8


@pytest.fixture(scope="module")
def trained_pair(tiny_bert, corpus):
    """The same fine-tuning twice: full vocabulary (from_pretrained) and PEMA, same seed, data order and head."""
    train_texts, eval_texts = corpus
    kept = kept_for(tiny_bert, train_texts + eval_texts)
    labels = [i % len(LABELS) for i in range(len(train_texts))]
    eval_labels = [i % len(LABELS) for i in range(len(eval_texts))]
    ids, eval_ids = encode(tiny_bert, train_texts), encode(tiny_bert, eval_texts)
    pema_ids = [map_ids(kept, np.asarray(s)).tolist() for s in ids]
    pema_eval_ids = [map_ids(kept, np.asarray(s)).tolist() for s in eval_ids]
    # Weight decay is on (the default 0.01): train.py never applies it to embeddings, so unused rows stay put.
    options = TrainOptions(epochs=2, lr=1e-3, batch_size=8, seed=5)
    partial = load_partial_model(source(tiny_bert), kept, CLASSIFIER, labels=LABELS, seed=5)
    full = full_classifier(tiny_bert, partial.model)
    pretrained = full.get_input_embeddings().weight.detach().clone()
    full_report = fine_tune(full, EncodedSet(ids, labels), EncodedSet(eval_ids, eval_labels), 0, options)
    pema_report = fine_tune(partial.model, EncodedSet(pema_ids, labels), EncodedSet(pema_eval_ids, eval_labels), 0, options)
    return dict(kept=kept, full=full, partial=partial, pretrained=pretrained, eval_ids=eval_ids,
                pema_eval_ids=pema_eval_ids, full_report=full_report, pema_report=pema_report)


def test_pema_and_full_fine_tuning_give_the_same_model(trained_pair):
    pair = trained_pair
    kept, full, partial = pair["kept"], pair["full"], pair["partial"].model
    assert pair["full_report"].eval_accuracy_per_epoch == pair["pema_report"].eval_accuracy_per_epoch
    difference = np.abs(logits(full, pair["eval_ids"]) - logits(partial, pair["pema_eval_ids"])).max()
    assert difference <= 1e-5
    trained_rows = full.get_input_embeddings().weight.detach()
    assert not torch.equal(trained_rows[kept.kept_ids], pair["pretrained"][kept.kept_ids])  # training did move them
    torch.testing.assert_close(trained_rows[kept.kept_ids], partial.get_input_embeddings().weight.detach(), atol=1e-6, rtol=0)
    dropped = np.flatnonzero(kept.id_map < 0)
    assert torch.equal(trained_rows[dropped], pair["pretrained"][dropped])  # no gradient, no decay: untouched


def test_save_full_writes_the_full_fine_tuned_model(trained_pair, tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    pair = trained_pair
    out = save_full_model(pair["partial"].model, pair["kept"], source(tiny_bert), tmp_path / "full")
    assert (out / "tokenizer.json").read_bytes() == (tiny_bert / "tokenizer.json").read_bytes()
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert merged.config.vocab_size == pair["kept"].original_size
    assert merged.config.pad_token_id == json.loads((tiny_bert / "config.json").read_text())["pad_token_id"]
    merged_rows = merged.get_input_embeddings().weight.detach()
    torch.testing.assert_close(merged_rows, pair["full"].get_input_embeddings().weight.detach(), atol=1e-6, rtol=0)
    difference = np.abs(logits(merged, pair["eval_ids"]) - logits(pair["full"], pair["eval_ids"])).max()
    assert difference <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no staging folder left behind


def test_save_full_leaves_nothing_when_it_fails(trained_pair, tiny_bert, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def fail_midway(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail_midway)
    with pytest.raises(OSError):
        save_full_model(pair_model := trained_pair["partial"].model, trained_pair["kept"], source(tiny_bert), tmp_path / "full")
    assert pair_model is not None and list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(OutputError, match="not an empty folder"):
        save_full_model(trained_pair["partial"].model, trained_pair["kept"], source(tiny_bert), tmp_path / "taken")


def test_minilm_loads_sliced_with_its_manifest_sizes():
    minilm = resolve_model(None)
    kept = kept_for(minilm.path, TRAINING_TEXT[:50])
    partial = load_partial_model(minilm, kept, CLASSIFIER, labels=LABELS)
    assert partial.original_embedding_params == 30522 * 384
    assert partial.exported_embedding_params == kept.size * 384
    assert partial.original_params - partial.exported_params == (30522 - kept.size) * 384

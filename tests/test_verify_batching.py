"""The checks after training run batched and beside the export: they must prove what the one-text-at-a-time
checks proved. Batches of equal-length texts give each text the answer a run on it alone gives; int8 still runs
one text per run; the padded path is still checked; fidelity still names the first wrong text; and the export
records its timings beside the manifest without touching the manifest's bytes.

One tiny export (tiny BERT as an encoder, web target: an fp32 and an int8 graph) serves the module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import SAMPLES
from pema_export.bundle import MANIFEST_NAME
from pema_export.errors import VerificationError
from pema_export.pipeline import ExportOptions, run
from pema_export.size import bundle_report
from pema_export.tasks import TASKS
from pema_export.timings import TIMINGS_NAME
from pema_export.verify import OnnxReference, check_stage, check_tokenization, length_groups, onnx_reference, parity_and_reference
from pema_export.vocab import choose_kept_ids, count_tokens, open_tokenizer, special_token_ids, unk_token_id

BOUND = TASKS["feature-extraction"].quantized_bound


def _texts() -> list[str]:
    lines = (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[:80]
    return [line.split("\t", 1)[1] for line in lines]


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory, tiny_bert) -> tuple[Path, dict]:
    corpus = tmp_path_factory.mktemp("corpus") / "texts.txt"
    corpus.write_text("\n".join(_texts()) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("tiny-web") / "bundle" / "model.onnx"
    result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(tiny_bert), target="web", oov="unk"))
    return out.parent, result.timings


def _tokenizer(bundle: Path):
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.enable_truncation(128)
    return tokenizer


def _one_text_per_run(model: Path, tokenizer, texts: list[str]) -> OnnxReference:
    """The reference as it was built before batching: one text per feed."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds, outputs = [], []
    for encoding in tokenizer.encode_batch(texts):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append(feed)
        outputs.append(dict(zip(names, session.run(names, feed))))
    return OnnxReference(list(texts), feeds, outputs, BOUND)


def test_length_groups_stack_only_equal_lengths_within_the_caps():
    lengths = [5, 3, 5, 9, 3, 5, 5, 2000]
    groups = length_groups(lengths, max_texts=3, max_tokens=12)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(len({lengths[i] for i in group}) == 1 for group in groups)
    assert groups == [[1, 4], [0, 2], [5, 6], [3], [7]]  # 5-token texts: at most 12 // 5 = 2 per batch


def test_batched_reference_gives_each_text_its_one_text_answer(web_bundle):
    bundle, _ = web_bundle
    fp32, tokenizer, texts = bundle / "onnx" / "model.onnx", _tokenizer(bundle), _texts()
    batched = onnx_reference(fp32, tokenizer, texts, pad_id=0, bound=BOUND)
    single = _one_text_per_run(fp32, tokenizer, texts)
    assert len(batched.feeds) < len(texts) and sorted(batched.texts) == sorted(texts)
    assert all(feed["attention_mask"].all() for feed in batched.feeds)  # no padding anywhere
    by_text = {text: out for text, out in zip(single.texts, single.outputs)}
    row_of = [(feed, out, row) for feed, out in zip(batched.feeds, batched.outputs) for row in range(len(feed["input_ids"]))]
    for text, (feed, out, row) in zip(batched.texts, row_of):
        for name, value in out.items():
            assert np.abs(value[row] - by_text[text][name][0]).max() <= 1e-5, (text, name)


def test_stage_checks_batched_equal_the_one_text_checks(web_bundle):
    """fp32 stages run the batches; int8 runs one text per run either way, so its figures are the same."""
    bundle, _ = web_bundle
    fp32, int8, tokenizer, texts = bundle / "onnx" / "model.onnx", bundle / "onnx" / "model_quantized.onnx", _tokenizer(bundle), _texts()
    batched = onnx_reference(fp32, tokenizer, texts, pad_id=0, bound=BOUND)
    single = _one_text_per_run(fp32, tokenizer, texts)
    assert check_stage("optimize", fp32, batched, "fp32").max_abs_diff <= 1e-5
    quantized = [check_stage("quantize int8", int8, reference, "int8") for reference in (batched, single)]
    assert quantized[0].texts_checked == quantized[1].texts_checked == len(texts)
    assert quantized[0].mean_cosine == pytest.approx(quantized[1].mean_cosine, abs=1e-6)
    assert quantized[0].min_cosine == pytest.approx(quantized[1].min_cosine, abs=1e-6)
    # why int8 is not batched: in a batch, each text's activation scale depends on the other texts
    feed = next(feed for feed in batched.feeds if len(feed["input_ids"]) > 1)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    together = session.run(None, feed)[0]
    alone = np.concatenate([session.run(None, {k: v[r : r + 1] for k, v in feed.items()})[0] for r in range(len(feed["input_ids"]))])
    assert np.abs(together - alone).max() > 0


def test_parity_runs_a_padded_batch_too(web_bundle):
    """A graph that answers right on unpadded batches but ignores the attention mask is caught."""
    bundle, _ = web_bundle
    fp32, tokenizer, texts = bundle / "onnx" / "model.onnx", _tokenizer(bundle), _texts()
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])

    def reference(mask_respected: bool):
        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            mask = attention_mask if mask_respected else torch.ones_like(attention_mask)
            feed = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros_like(input_ids.numpy())}
            return {"last_hidden_state": session.run(["last_hidden_state"], feed)[0]}
        return forward

    report, kept = parity_and_reference(fp32, reference(True), tokenizer, texts, pad_id=0, bound=BOUND)
    assert report.texts_checked == len(texts) and report.max_abs_diff <= 1e-5 and len(kept.texts) == len(texts)
    with pytest.raises(VerificationError, match="output parity failed on corpus text"):
        parity_and_reference(fp32, reference(False), tokenizer, texts, pad_id=0)


def test_fidelity_counts_dropped_texts_and_names_the_first_wrong_one(wordpiece_tokenizer):
    tokenizer_json = json.loads(wordpiece_tokenizer.to_str())
    original = open_tokenizer(tokenizer_json)
    texts = _texts() * 3
    counts = count_tokens(original, texts)
    kept = choose_kept_ids(counts, special_token_ids(tokenizer_json, {}), unk_id=unk_token_id(tokenizer_json), min_count=4,
                           original_size=original.get_vocab_size(with_added_tokens=True))
    from pema_export.tokenizers import prune_tokenizer

    pruned = open_tokenizer(prune_tokenizer(tokenizer_json, kept.kept_ids))
    dropped = sum(int((kept.id_map[original.encode(t).ids] < 0).any()) for t in texts)
    report = check_tokenization(original, pruned, kept, iter(texts))
    assert 0 < dropped < len(texts)
    assert (report.texts_checked, report.texts_with_dropped_tokens) == (len(texts) - dropped, dropped)
    # the original tokenizer posing as the pruned one: ids not renumbered; the first text with a kept id that moved
    first = next(t for t in texts if (kept.id_map[original.encode(t).ids] >= 0).all()
                 and kept.id_map[original.encode(t).ids].tolist() != original.encode(t).ids)
    with pytest.raises(VerificationError, match=re.escape(f"tokenization fidelity failed on corpus text {first[:80]!r}")):
        check_tokenization(original, original, kept, iter(texts))


def test_counts_from_fast_encoding_equal_the_full_encoding(wordpiece_tokenizer, bpe_tokenizer, unigram_tokenizer):
    texts = _texts() + ["", "emoji 🎉 and CJK 漢字", "x" * 300]
    for tokenizer in (wordpiece_tokenizer, bpe_tokenizer, unigram_tokenizer):
        expected = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
        for encoding in tokenizer.encode_batch(texts):
            np.add.at(expected, encoding.ids, 1)
        assert np.array_equal(count_tokens(tokenizer, iter(texts), batch_size=7).counts, expected)


def test_timings_are_recorded_beside_the_manifest_not_in_it(web_bundle):
    bundle, timings = web_bundle
    on_disk = json.loads((bundle / TIMINGS_NAME).read_text(encoding="utf-8"))
    assert on_disk["seconds"].keys() == timings["seconds"].keys()
    steps = on_disk["seconds"]
    for step in ("prepare", "scan", "partial model", "tokenizer", "export", "fidelity", "fidelity wait", "parity",
                 "stage quantize int8", "stage files", "held out", "manifest", "commit"):
        assert steps[step] >= 0, step
    assert on_disk["concurrent"] == {"fidelity": "export"}
    post = [name for name in steps if name not in ("prepare", "scan", "string input plan", "partial model", "train", "fidelity")]
    assert on_disk["post_training_steps"] == post
    assert on_disk["post_training_seconds"] == pytest.approx(sum(steps[name] for name in post), abs=0.01)
    assert "train" not in steps and on_disk["post_training_to_training"] is None  # an encoder: nothing to train
    manifest = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert "timings" not in manifest and TIMINGS_NAME not in manifest["files"]
    assert TIMINGS_NAME not in {f.name for f in bundle_report(bundle).files}

"""Issue 7: text the corpus never had. Prior words, the expected-benefit budget, the nearest-kept remap (in Python
onnxruntime, transformers.js and a tokenizers round trip), OOV dropout, and the held-out figures in the manifest."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from conftest import REPO, SAMPLES, run_cli, sample_head, transformers_js_outputs, urgent_or_normal
from pema_export.oov import POLICIES
from pema_export.oov import prior as oov_prior
from pema_export.oov import remap as oov_remap
from pema_export.budget import BudgetError
from pema_export.errors import CorpusError, TokenizerError
from pema_export.models import resolve_model
from pema_export.pipeline import ExportOptions, run
from pema_export.profiles import load_target
from pema_export.scan import bundle_bytes_predictor, scan_vocabulary
from pema_export.stages.id_table import ID_MAP_NAME
from pema_export.tasks import TASKS
from pema_export.train import TrainOptions, drop_words, word_spans
from pema_export.vocab import TokenCounts, choose_kept_ids, open_tokenizer, special_token_ids

UNSEEN = ["The courier vanished with my lasagne and the receipt", "Refund the tiramisu, it arrived frozen solid"]


@pytest.fixture(scope="module")
def minilm_tokenizer_json():
    return json.loads(resolve_model(None).tokenizer_json.read_text(encoding="utf-8"))


def test_the_corpus_language_is_detected_per_text():
    english = [line.split("\t", 1)[1] for line in (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[:60]]
    german = ["Wo ist meine Bestellung, sie sollte schon längst da sein", "Ich möchte mein Geld zurück, das Essen war kalt"] * 10
    assert list(oov_prior.detect_languages(english)) == ["en"]
    assert list(oov_prior.detect_languages(german)) == ["de"]
    # a few stray texts in another language do not buy that language a prior
    assert list(oov_prior.detect_languages(english + german[:6])) == ["en"]
    assert set(oov_prior.detect_languages(english[:20] + german)) == {"en", "de"}


def test_prior_words_are_the_model_tokenizers_tokens_of_common_words(minilm_tokenizer_json):
    tokenizer = open_tokenizer(minilm_tokenizer_json)
    prior = oov_prior.prior_words(tokenizer, ["en"], 2000, tokenizer.get_vocab_size())
    vocab = tokenizer.get_vocab()
    assert {vocab["the"], vocab["because"], vocab["yesterday"]} <= prior.ids
    assert vocab["helicopter"] not in prior.ids  # a real word, but not among the 2,000 most frequent
    assert prior.token_share[vocab["the"]] > prior.token_share[vocab["because"]] > 0
    assert prior.token_share.sum() == pytest.approx(1.0)
    assert oov_prior.prior_words(tokenizer, ["en"], 20000, tokenizer.get_vocab_size()).ids > prior.ids


def test_the_budget_keeps_corpus_tokens_first_then_prior_tokens_by_frequency():
    counts = TokenCounts(counts=np.array([0, 5, 1, 0, 0, 0, 0, 0]), texts=2)
    share = np.array([0, 0.1, 0.0, 0.5, 0.3, 0.1, 0.0, 0.0])
    kept = lambda cap: choose_kept_ids(counts, {0}, unk_id=0, max_vocab=cap, prior_share=share).kept_ids.tolist()  # noqa: E731
    assert kept(None) == [0, 1, 2, 3, 4, 5]
    assert kept(3) == [0, 1, 2]  # the rare corpus token 2 beats the common prior token 3: it keeps the corpus exact
    assert kept(4) == [0, 1, 2, 3]
    assert kept(5) == [0, 1, 2, 3, 4]


def test_max_bytes_picks_the_largest_vocabulary_that_fits(tiny_bert, labelled_corpus):
    source = resolve_model(str(tiny_bert))
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    target = load_target("cpu")
    whole = scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk", prior_words=5000, prior_lang=["en"])
    predict = bundle_bytes_predictor(source, tokenizer_json, TASKS["text-classification"], 6, target, POLICIES["unk"])
    limit = (predict(whole.kept) + predict(scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk").kept)) // 2
    budget = scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk", prior_words=5000, prior_lang=["en"],
                             max_bytes=limit, target=target)
    assert budget.predicted_bytes <= limit < predict(
        scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk", prior_words=5000, prior_lang=["en"],
                        max_vocab=budget.kept.size + 1).kept
    )
    assert set(budget.kept.kept_ids) >= set(np.flatnonzero(budget.counts.counts))  # every corpus token still fits
    with pytest.raises(BudgetError, match="below the smallest bundle"):
        scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk", max_bytes=1000, target=target)


def test_a_bundle_over_max_bytes_is_not_written(tiny_bert, labelled_corpus, tmp_path, monkeypatch):
    """The prediction chooses the vocabulary; the written bundle is checked against --max-bytes all the same."""
    from pema_export import scan as scan_module

    source = resolve_model(str(tiny_bert))
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    predict = bundle_bytes_predictor(source, tokenizer_json, TASKS["text-classification"], 6, load_target("cpu"), POLICIES["unk"])
    smallest = predict(scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk").kept)
    largest = predict(scan_vocabulary(source, tokenizer_json, [labelled_corpus], oov="unk", prior_words=5000, prior_lang=["en"]).kept)
    limit, under = (smallest + largest) // 2, (largest - smallest) // 4
    real = scan_module.predict_sizes  # a prediction `under` bytes short, as a miscalibrated one would be
    monkeypatch.setattr(scan_module, "predict_sizes", lambda *args, **kwargs: replace(real(*args, **kwargs), other_bytes=real(*args, **kwargs).other_bytes - under))
    out = tmp_path / "app" / "model.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the team's earlier bundle")
    with pytest.raises(BudgetError, match=rf"^--max-bytes {limit:,}: the bundle came to [\d,]+ bytes, [\d,]+ over .*"
                                          r"nothing was written; rerun with --max-bytes [\d,]+ to fit$"):
        run(ExportOptions(corpus=[str(labelled_corpus)], out=str(out), model=str(tiny_bert), target="cpu", oov="unk",
                          prior_words=5000, prior_lang=["en"], max_bytes=limit, train=TrainOptions(epochs=1)))
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"] and out.read_bytes() == b"the team's earlier bundle"


def test_auto_takes_remap_unless_its_bundle_grows_more_than_two_percent():
    from pema_export.oov.auto import resolve_auto_oov

    assert resolve_auto_oov({"remap": 102, "fallback": 100})[0] == "remap"
    policy, record = resolve_auto_oov({"remap": 103, "fallback": 100})
    assert policy == "fallback" and "+3.0%" in record["reason"] and record["predicted_bytes"] == {"remap": 103, "fallback": 100}
    assert resolve_auto_oov({"remap": 90, "fallback": 100}, unavailable="fill-mask logits are over the kept rows")[0] == "fallback"


def test_auto_takes_the_compressed_tail_wherever_enough_rows_lie_outside_the_corpus(minilm_tokenizer_json):
    """MiniLM: an encoder (no labels) and a fine-tuned classifier both get the tail (the original tokenizer, the
    corpus's rows exact, the other ~29k coded), without word dropout: an unseen word keeps its own rows. The encoder
    also keeps the rows of its language's 2,000 most frequent words exact; the classifier does not."""
    minilm = resolve_model(None)
    corpus_only = {}
    for corpus in (SAMPLES / "search_texts.txt", SAMPLES / "app_texts.txt"):
        corpus_only[corpus.name] = scan_vocabulary(minilm, minilm_tokenizer_json, [corpus], oov="tail").kept.size
        for target in ("cpu", "web"):
            scan = scan_vocabulary(minilm, minilm_tokenizer_json, [corpus], oov="auto", target=load_target(target))
            assert (scan.oov, scan.oov_dropout) == ("tail", 0.0) and scan.oov_choice["chosen"] == "tail"
            assert f"the other {30522 - scan.kept.size:,} compressed" in scan.oov_choice["reason"]
            if corpus.name == "search_texts.txt":  # unlabelled: an encoder
                assert scan.oov_choice["prior_words"] == 2000 and scan.prior.languages == ("en",)
                assert "2,000 most frequent en words" in scan.oov_choice["reason"]
                prior_ids = scan.prior.ids
                assert scan.kept.size > corpus_only[corpus.name] + 1000 and prior_ids <= set(scan.kept.kept_ids.tolist())
            else:
                assert "prior_words" not in scan.oov_choice and scan.prior is None
                assert scan.kept.size == corpus_only[corpus.name]


def test_the_tail_codes_finer_where_the_model_files_are_fp32_or_fp16_than_where_they_are_int8(minilm_tokenizer_json):
    """In int8 files the model's own rounding is of the order of a 4-value code's; in fp32 and fp16 files the tail
    is the only error, so each code byte covers 2 values: MiniLM's 384-wide rows get 96 and 192 bytes."""
    minilm = resolve_model(None)
    row_bytes = {}
    for target, quantize in (("cpu", None), ("cpu", "none"), ("cpu", "fp16"), ("web", None), ("android", None)):
        scan = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "app_texts.txt"], oov="tail",
                               target=load_target(target, quantize=quantize))
        row_bytes[target, quantize] = scan.policy.row_bytes
        assert scan.policy.reason.endswith(f"for {'fp32' if scan.settings.precision == 'none' else scan.settings.precision} model files")
    assert row_bytes == {("cpu", None): 96, ("cpu", "none"): 192, ("cpu", "fp16"): 192, ("web", None): 96, ("android", None): 96}
    given = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "app_texts.txt"], oov="tail", tail_row_bytes=24,
                            target=load_target("cpu", quantize="none"))
    assert given.policy.row_bytes == 24 and given.policy.reason == "--tail-row-bytes"


def test_auto_gives_an_encoder_no_prior_where_its_language_is_unknown_or_the_tail_would_be_too_small(
        minilm_tokenizer_json, tiny_bert, tmp_path):
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("".join(f"{n} {n * 7} {n * 13}\n" for n in range(200)), encoding="utf-8")
    scan = scan_vocabulary(resolve_model(None), minilm_tokenizer_json, [numbers], oov="auto", target=load_target("cpu"))
    assert scan.oov == "tail" and scan.prior is None and scan.oov_choice["prior_words"] is None
    assert "cannot detect the corpus language" in scan.oov_choice["prior_skipped"]
    # the tiny model's 600 rows: English's common words would leave too few rows for a codebook
    tiny = resolve_model(str(tiny_bert))
    tiny_json = json.loads(tiny.tokenizer_json.read_text(encoding="utf-8"))
    few = sample_head(tmp_path, "search_texts.txt", 3)
    scan = scan_vocabulary(tiny, tiny_json, [few], oov="auto", target=load_target("cpu"))
    assert scan.oov == "tail" and scan.prior is None
    assert "rows would remain for the tail (256 needed)" in scan.oov_choice["prior_skipped"]
    # a prior the user asked for is theirs, whatever auto would add
    given = scan_vocabulary(resolve_model(None), minilm_tokenizer_json, [SAMPLES / "search_texts.txt"], oov="auto",
                            target=load_target("cpu"), prior_words=100, prior_lang=["en"])
    assert given.prior.words == 100 and "prior_words" not in given.oov_choice


def test_prior_lang_steers_the_words_auto_keeps_for_an_encoder_and_is_refused_where_none_are_kept(minilm_tokenizer_json, tmp_path):
    minilm = resolve_model(None)
    german = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "search_texts.txt"], oov="auto",
                             target=load_target("cpu"), prior_lang=["de"])
    assert german.prior.languages == ("de",) and german.detected_languages is None
    assert german.oov_choice["prior_words"] == 2000 and "most frequent de words" in german.oov_choice["reason"]
    detected = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "search_texts.txt"], oov="auto",
                               target=load_target("cpu"))
    assert detected.prior.languages == ("en",) and german.kept.size != detected.kept.size
    # a fine-tuned model gets no prior words from auto: --prior-lang alone would do nothing, so it is refused
    with pytest.raises(CorpusError, match="--prior-lang en: this export keeps no prior words"):
        scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "app_texts.txt"], oov="auto", target=load_target("cpu"),
                        prior_lang=["en"])
    with pytest.raises(CorpusError, match="--prior-lang xx: no word list"):  # before the corpus is read
        scan_vocabulary(minilm, minilm_tokenizer_json, [tmp_path / "missing.txt"], oov="auto", target=load_target("cpu"),
                        prior_lang=["xx"])
    done = run_cli("scan", "--corpus", str(SAMPLES / "search_texts.txt"), "--prior-lang", "de", "--json")
    assert done.returncode == 0, done.stderr
    assert "most frequent de words" in json.loads(done.stdout)["vocab"]["oov_choice"]["reason"]


def test_auto_trains_tagged_sentences_with_word_dropout_under_the_tail_and_texts_without(minilm_tokenizer_json):
    """Token classification's measured default (Task.tail_word_dropout, benchmarks/token_classification.py); text
    classification's five-set measurement had none."""
    minilm = resolve_model(None)
    tagged = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "slot_texts.jsonl"], oov="auto", target=load_target("web"))
    assert (tagged.oov, tagged.oov_dropout, tagged.oov_choice["oov_dropout"]) == ("tail", 0.1, 0.1)
    assert "--oov-dropout 0.1 as a regulariser" in tagged.oov_choice["reason"]
    undropped = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "slot_texts.jsonl"], oov="auto", target=load_target("web"),
                                oov_dropout=0.0)
    assert (undropped.oov, undropped.oov_dropout, undropped.oov_choice["oov_dropout"]) == ("tail", 0.0, 0.0)
    texts = scan_vocabulary(minilm, minilm_tokenizer_json, [SAMPLES / "app_texts.txt"], oov="auto", target=load_target("cpu"))
    assert (texts.oov, texts.oov_dropout) == ("tail", 0.0) and "oov_dropout" not in texts.oov_choice


def test_auto_with_too_few_rows_for_a_tail_keeps_the_earlier_rule():
    """Fewer than 256 rows outside the corpus (no codebook to learn): a labelled corpus gets unk with word dropout;
    otherwise remap, unless its bundle grows more than 2% over fallback's, or it cannot serve the task."""
    from pema_export.oov import auto

    no_refusals = {"tail": None, "remap": None, "fallback": None}
    policy, dropout, record = auto.choose(True, True, no_refusals, lambda name: 100, tail_rows=255)
    assert (policy, dropout) == ("unk", 0.1) and record["reason"].startswith("only 255 rows lie outside the corpus")
    sizes = {"remap": 103, "fallback": 100}
    assert auto.choose(False, True, no_refusals, sizes.get, tail_rows=10)[0] == "fallback"
    assert auto.choose(False, True, no_refusals, {"remap": 101, "fallback": 100}.get, tail_rows=10)[0] == "remap"
    refused = {**no_refusals, "tail": object()}  # a task the tail cannot serve falls back to the earlier rule
    assert auto.choose(True, True, refused, lambda name: 100, tail_rows=5000)[0] == "unk"
    assert auto.choose(True, True, no_refusals, lambda name: 100, tail_rows=256)[:2] == ("tail", 0.0)
    # a task with a word dropout for the tail (token classification) trains with it, where there is an UNK to use
    policy, dropout, record = auto.choose(True, True, no_refusals, lambda name: 100, tail_rows=256, tail_dropout=0.1)
    assert (policy, dropout, record["oov_dropout"]) == ("tail", 0.1, 0.1) and "--oov-dropout 0.1 as a regulariser" in record["reason"]
    assert auto.choose(True, False, no_refusals, lambda name: 100, tail_rows=256, tail_dropout=0.1)[:2] == ("tail", 0.0)
    assert auto.choose(False, True, no_refusals, lambda name: 100, tail_rows=256, tail_dropout=0.1)[:2] == ("tail", 0.0)
    # the user's --oov-dropout replaces auto's own rate, and the record says which it is, not auto's
    for tail_rows, own in ((256, 0.1), (255, 0.1), (256, 0.0)):
        policy, dropout, record = auto.choose(True, True, no_refusals, lambda name: 100, tail_rows=tail_rows, tail_dropout=0.1 if own else 0.0,
                                              dropout_given=0.0 if own else 0.2)
        given = 0.0 if own else 0.2
        assert (dropout, record["oov_dropout"]) == (given, given)
        assert record["reason"].endswith(f"fine-tuned with --oov-dropout {given} (given, in place of auto's {own})"), record
    assert auto.choose(True, True, no_refusals, lambda name: 100, tail_rows=256, tail_dropout=0.1, dropout_given=0.1)[2]["reason"].endswith(
        "fine-tuned with --oov-dropout 0.1 (given; auto's own rate too)")


def test_the_default_is_auto_and_the_manifest_and_scan_say_what_it_chose(tiny_bert, labelled_corpus, tmp_path):
    out = tmp_path / "app" / "model.onnx"
    manifest = run(ExportOptions(corpus=[str(labelled_corpus)], out=str(out), model=str(tiny_bert), train=TrainOptions(epochs=1))).manifest.to_json()
    choice = manifest["vocab"]["oov_choice"]
    assert choice["requested"] == "auto" and manifest["vocab"]["oov"] == choice["chosen"]
    # the tiny model's 600-token vocabulary leaves 129 rows outside this corpus: too few for a codebook, so the
    # earlier rule (MiniLM, with ~29k such rows, gets the tail: the test above)
    tail_rows = manifest["vocab"]["original"] - manifest["vocab"]["kept"]
    assert choice["chosen"] == "unk" and manifest["training"]["oov_dropout"] == choice["oov_dropout"] == 0.1
    assert choice["reason"].startswith(f"only {tail_rows} rows lie outside the corpus, too few for a compressed tail")
    explicit = run(ExportOptions(corpus=[str(labelled_corpus)], out=str(tmp_path / "b" / "model.onnx"), model=str(tiny_bert),
                                 oov="unk", train=TrainOptions(epochs=1, oov_dropout=0.0))).manifest.to_json()
    assert explicit["vocab"]["oov"] == "unk" and explicit["training"]["oov_dropout"] == 0.0  # a given policy and rate win
    # a given rate under auto: the manifest's choice records the rate training used, not auto's own
    given = run(ExportOptions(corpus=[str(labelled_corpus)], out=str(tmp_path / "c" / "model.onnx"), model=str(tiny_bert),
                              train=TrainOptions(epochs=1, oov_dropout=0.0))).manifest.to_json()
    assert given["training"]["oov_dropout"] == given["vocab"]["oov_choice"]["oov_dropout"] == 0.0
    assert given["vocab"]["oov_choice"]["reason"].endswith("--oov-dropout 0.0 (given, in place of auto's 0.1)")
    done = run_cli("scan", "--corpus", labelled_corpus, "--model", tiny_bert)
    assert done.returncode == 0 and f"--oov {choice['chosen']} (auto: " in done.stdout


def test_nearest_kept_table_maps_dropped_ids_to_the_closest_non_special_kept_row():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(40, 8)).astype(np.float32)
    counts = TokenCounts(counts=np.r_[np.zeros(2), np.ones(10), np.zeros(28)].astype(np.int64), texts=1)
    kept = choose_kept_ids(counts, {0, 1}, unk_id=1)
    tables = oov_remap.nearest_kept_table(embedding, kept, {0, 1})
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    candidates = np.arange(2, 12)
    for old in range(40):
        if old < 12:
            assert tables.id_map[old] == old  # kept ids run as themselves (here new == old)
        else:
            assert tables.id_map[old] == candidates[np.argmax(unit[candidates] @ unit[old])]
    for new in range(2, 12):
        others = candidates[candidates != new]
        assert tables.neighbour[new] == others[np.argmax(unit[others] @ unit[new])]
    assert tables.neighbour[0] == 0 and tables.remapped_ids == 28


def test_word_dropout_replaces_whole_words_and_never_specials():
    ids = [101, 7, 8, 9, 102]
    spans = word_spans([None, 0, 0, 1, None])
    assert spans == [(1, 3), (3, 4)]
    assert drop_words(ids, spans, 0.0, lambda word: [0], random.Random(0)) == ids
    assert drop_words(ids, spans, 1.0, lambda word: [0], random.Random(0)) == [101, 0, 0, 102]
    assert drop_words(ids, spans, 1.0, lambda word: [w + 1 for w in word], random.Random(0)) == [101, 8, 9, 10, 102]


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory):
    return urgent_or_normal(tmp_path_factory.mktemp("heldout"), "heldout.txt", 40, "heldout.txt")


@pytest.fixture(scope="module")
def remap_bundles(tmp_path_factory, tiny_bert, heldout_file):
    corpus = urgent_or_normal(tmp_path_factory.mktemp("corpus"), "app_texts.txt", 120, "corpus.txt")
    bundles = {"corpus": corpus}
    for target in ("cpu", "web", "android"):
        out = tmp_path_factory.mktemp(f"remap-{target}") / "app" / "model.onnx"
        # 8 epochs at 5e-3: held-out accuracy 0.975-1.0 (seeds 0, 1), margins wide enough for int8's 99% agreement
        result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(tiny_bert), target=target, oov="remap",
                                   eval_file=str(heldout_file), train=TrainOptions(epochs=8, lr=5e-3, oov_dropout=0.1)))
        bundles[target] = (out.parent, result.manifest.to_json())
    return bundles


def test_a_remap_bundle_ships_the_original_tokenizer_and_an_exact_id_table(remap_bundles, tiny_bert):
    bundle, manifest = remap_bundles["cpu"]
    original = open_tokenizer(tiny_bert / "tokenizer.json")
    shipped = open_tokenizer(bundle / "tokenizer.json")
    assert shipped.get_vocab() == original.get_vocab()
    # it survives a round trip through tokenizers (aliases in tokenizer.json would not)
    round_trip = open_tokenizer(json.loads(shipped.to_str()))
    texts = UNSEEN + [line.split("\t", 1)[1] for line in (SAMPLES / "heldout.txt").read_text(encoding="utf-8").splitlines()[:20]]
    assert [e.ids for e in round_trip.encode_batch(texts)] == [e.ids for e in original.encode_batch(texts)]
    graph = onnx.load(str(bundle / "model.onnx")).graph
    table = next(numpy_helper.to_array(t) for t in graph.initializer if t.name == ID_MAP_NAME)
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    assert table.dtype == np.int32 and len(table) == original.get_vocab_size() == config["vocab_size"]
    kept_rows = manifest["vocab"]["kept"]
    assert table.max() == kept_rows - 1 and len(np.unique(table)) == kept_rows
    assert manifest["vocab"]["remap"]["remapped_ids"] == len(table) - kept_rows > 0
    assert manifest["vocab"]["oov"] == "remap"
    assert manifest["parity"]["tokenization_mismatches"] == 0 and manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["training"]["oov_dropout"] == 0.1 and manifest["training"]["oov_dropout_substitute"] == "nearest kept token"


def test_a_remap_bundle_runs_original_ids_as_their_nearest_kept_rows(remap_bundles):
    bundle, _ = remap_bundles["web"]
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    model = onnx.load(str(bundle / "onnx/model.onnx"))
    table = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == ID_MAP_NAME).astype(np.int64)
    # the same graph without the table, fed the table's ids by hand, must answer identically
    plain = onnx.load(str(bundle / "onnx/model.onnx"))
    del plain.graph.node[:2]
    for node in plain.graph.node:
        node.input[:] = ["input_ids" if name == "input_ids_pruned" else name for name in node.input]
    plain.graph.initializer.remove(next(t for t in plain.graph.initializer if t.name == ID_MAP_NAME))
    with_table = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    by_hand = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    for text in UNSEEN:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        assert (table[ids] != ids).any()  # the table renumbers (and remaps) the ids
        feeds = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        got = with_table.run(None, {"input_ids": ids, **feeds})[0]
        want = by_hand.run(None, {"input_ids": table[ids], **feeds})[0]
        assert np.array_equal(got, want)


@pytest.mark.parametrize("target, model_name", [("cpu", "model.onnx"), ("android", "model.ort")])
def test_an_unseen_token_runs_exactly_as_its_nearest_kept_token(remap_bundles, tiny_bert, target, model_name):
    """Feeding a text's original ids, or the same ids with every dropped one replaced by (the original id of) its
    nearest kept token, gives the same outputs, bit for bit: for the fused int8 .onnx and for the .ort file."""
    bundle, manifest = remap_bundles[target]
    assert manifest["vocab"]["remap"]["models"] == [model_name]
    source = resolve_model(str(tiny_bert))
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    kept = scan_vocabulary(source, tokenizer_json, [remap_bundles["corpus"]], oov="remap").kept
    tables = oov_remap.nearest_kept_table(oov_remap.pretrained_embedding(source), kept, special_token_ids(tokenizer_json, source.read_config()))
    assert manifest["vocab"]["kept"] == kept.size and manifest["vocab"]["remap"]["remapped_ids"] == tables.remapped_ids
    session = ort.InferenceSession(str(bundle / model_name), providers=["CPUExecutionProvider"])
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    texts = UNSEEN + [line.split("\t", 1)[1] for line in (SAMPLES / "heldout.txt").read_text(encoding="utf-8").splitlines()]
    with_unseen = [ids for ids in (tokenizer.encode(text).ids for text in texts) if (kept.id_map[ids] < 0).any()]
    assert len(with_unseen) >= 10  # texts with tokens the corpus never had
    for text_ids in with_unseen[:10]:
        ids = np.asarray([text_ids], dtype=np.int64)
        as_neighbours = kept.kept_ids[tables.id_map[ids]]
        feeds = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        got = session.run(None, {"input_ids": ids, **feeds})[0]
        want = session.run(None, {"input_ids": as_neighbours, **feeds})[0]
        assert np.array_equal(got, want)
    usability = manifest.get("mobile", {}).get("usability")
    assert target != "android" or usability is not None


def test_transformers_js_tokenizes_and_runs_a_remap_bundle_as_python_does(remap_bundles, tmp_path):
    bundle, _ = remap_bundles["web"]
    ids, outputs = transformers_js_outputs(bundle, UNSEEN, ["fp32", "q8"], tmp_path)
    for dtype, model in (("fp32", "onnx/model.onnx"), ("q8", "onnx/model_quantized.onnx")):
        session = ort.InferenceSession(str(bundle / model), providers=["CPUExecutionProvider"])
        for row, text_ids in enumerate(ids):
            feed = np.asarray([text_ids], dtype=np.int64)
            want = session.run(["logits"], {"input_ids": feed, "attention_mask": np.ones_like(feed), "token_type_ids": np.zeros_like(feed)})[0]
            assert np.allclose(outputs[dtype]["values"][row], want.ravel(), atol=1e-5)


def test_the_manifest_records_held_out_figures_of_the_shipped_model(remap_bundles, heldout_file, tiny_bert):
    """The figures, recomputed here from the shipped files alone: the bundle's tokenizer and model.onnx run on each
    held-out text (one at a time), its answers against the file's labels, and the pieces that are UNK or remapped."""
    bundle, manifest = remap_bundles["cpu"]
    heldout = manifest["heldout"]
    assert heldout["file"] == heldout_file.name and heldout["texts"] == 40 and heldout["model"] == "model.onnx"
    pairs = [line.split("\t", 1) for line in heldout_file.read_text(encoding="utf-8").splitlines()]
    labels = manifest["training"]["labels"]
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    right, pieces = 0, []
    for label, text in pairs:
        encoding = tokenizer.encode(text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
        right += labels[int(logits[0].argmax())] == label
        pieces += [i for i, special in zip(encoding.ids, encoding.special_tokens_mask) if not special]
    assert heldout["accuracy"] == pytest.approx(right / len(pairs), abs=1e-6)
    assert heldout["accuracy"] >= 0.9  # it learned the rule: a model that did not scores about 0.5 here
    source = resolve_model(str(tiny_bert))
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    kept = scan_vocabulary(source, tokenizer_json, [remap_bundles["corpus"]], oov="remap").kept
    pieces = np.asarray(pieces)
    assert heldout["unk_rate"] == pytest.approx(np.mean(pieces == tokenizer.token_to_id("[UNK]")), abs=1e-6)
    assert heldout["remapped_rate"] == pytest.approx(np.mean(kept.id_map[pieces] < 0), abs=1e-6) and heldout["remapped_rate"] > 0


def test_an_encoder_is_held_to_the_full_vocabulary_model_on_held_out_text(tiny_sentence_encoder, heldout_file, tmp_path):
    """--eval on an encoder: each held-out text's sentence vector from the shipped model, against the original
    model's (every row, its own tokenizer). Keeping every token gives the original back; pruning does not."""
    import torch
    from transformers import AutoModel

    corpus = tmp_path / "queries.txt"
    corpus.write_text("\n".join(line.split("\t", 1)[1] for line in (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[:60]) + "\n")
    everything = tmp_path / "all-tokens.txt"
    vocab = open_tokenizer(tiny_sentence_encoder / "tokenizer.json").get_vocab()
    everything.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")

    def heldout(name: str, **options) -> dict:
        out = tmp_path / name / "model.onnx"
        return run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(tiny_sentence_encoder), quantize="none",
                                 eval_file=str(heldout_file), **options)).manifest.to_json()["heldout"]

    full, pruned = heldout("full", keep_tokens=str(everything)), heldout("pruned", oov="unk")
    assert full["cosine_to_full"]["min"] > 0.9999 and full["nearest_neighbour_agreement"] == 1.0
    assert pruned["cosine_to_full"]["mean"] < 0.999 and pruned["unk_rate"] > full["unk_rate"]
    assert pruned["accuracy"] is None and pruned["texts"] == 40
    # the same figure, recomputed here: the pruned bundle's tokenizer and model against the original in torch
    tokenizer = open_tokenizer(tmp_path / "pruned" / "tokenizer.json")
    original_tokenizer = open_tokenizer(tiny_sentence_encoder / "tokenizer.json")
    session = ort.InferenceSession(str(tmp_path / "pruned" / "model.onnx"), providers=["CPUExecutionProvider"])
    original = AutoModel.from_pretrained(tiny_sentence_encoder).eval()
    cosines = []
    for line in heldout_file.read_text(encoding="utf-8").splitlines():
        text = line.split("\t", 1)[1]
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        got = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0][0]
        with torch.no_grad():
            want = original(input_ids=torch.tensor([original_tokenizer.encode(text).ids])).last_hidden_state[0].mean(0).numpy()
        cosines.append(float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
    assert pruned["cosine_to_full"]["mean"] == pytest.approx(np.mean(cosines), abs=1e-5)
    assert pruned["cosine_to_full"]["min"] == pytest.approx(min(cosines), abs=1e-5)


def test_oov_dropout_changes_training_and_stays_deterministic(tiny_bert, labelled_corpus, tmp_path):
    def export(name: str, dropout: float) -> bytes:
        out = tmp_path / name / "model.onnx"
        run(ExportOptions(corpus=[str(labelled_corpus)], out=str(out), model=str(tiny_bert), target="cpu", oov="unk",
                          quantize="none", train=TrainOptions(epochs=1, oov_dropout=dropout)))
        return out.read_bytes()

    assert export("a", 0.2) == export("b", 0.2) != export("c", 0.0)


def test_bad_oov_options_are_one_line_errors(tmp_path, tiny_bert, tiny_roberta, labelled_corpus):
    with pytest.raises(TokenizerError, match="--oov-dropout needs an UNK token"):
        run(ExportOptions(corpus=[str(labelled_corpus)], out=str(tmp_path / "b" / "model.onnx"), model=str(tiny_roberta),
                          oov="unk", train=TrainOptions(epochs=1, oov_dropout=0.1)))
    for args, message in (
        (["--oov-dropout", "1.5"], "--oov-dropout must be at least 0 and below 1"),
        (["--prior-words", "0"], "--prior-words must be at least 1"),
        (["--prior-words", "10", "--prior-lang", "xx"], "--prior-lang xx: no word list"),
        (["--max-bytes", "1 kB"], "--max-bytes 1,000 is below the smallest bundle"),
        (["--oov", "remap", "--task", "fill-mask"], "--oov remap cannot serve --task fill-mask"),
    ):
        done = run_cli("--corpus", labelled_corpus, "--out", tmp_path / "c" / "model.onnx", "--model", tiny_bert, "--quiet", *args)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

"""Token classification on tiny models: the corpus formats, word labels on the first sub-word piece for every
tokenizer family, the entity metric against a hand-worked seqeval example, and exports under each --oov policy.
(The real MiniLM end to end, and transformers.js on its web bundle: test_token_classification_minilm.py.)"""

from __future__ import annotations

import json
import random

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from conftest import SAMPLES
from pema_export.corpus import TEXT_LABEL, Example, read_corpus
from pema_export.errors import CorpusError
from pema_export.entities import IGNORED, Entity, label_names, spans, unit_tags
from pema_export.pipeline import ExportOptions, run
from pema_export.tasks import TASKS
from pema_export.train import TrainOptions, drop_words

SENTENCES = [
    (["Where", "is", "order", "#A58213", "?"], ["O", "O", "O", "B-ORDER_ID", "O"]),
    (["Ship", "the", "blue", "yoga", "mat", "to", "São", "Paulo", "tomorrow"],
     ["O", "O", "B-PRODUCT", "I-PRODUCT", "I-PRODUCT", "O", "B-CITY", "I-CITY", "B-DATE"]),
    (["thanks", "!"], ["O", "O"]),
]


def conll(sentences) -> str:
    return "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(words, tags)) for words, tags in sentences) + "\n"


def span_record(words, tags) -> dict:
    """The {"text", "entities"} form of tagged words, offsets counted by hand from the joined words."""
    entities, position, current = [], 0, None
    for word, tag in zip(words, tags):
        if tag.startswith("I-"):
            current["end"] = position + len(word)
        else:
            if current:
                entities.append(current)
            current = {"start": position, "end": position + len(word), "label": tag[2:]} if tag != "O" else None
        position += len(word) + 1
    return {"text": " ".join(words), "entities": entities + ([current] if current else [])}


def test_conll_tagged_txt_and_both_jsonl_forms_read_to_the_same_sentences(tmp_path):
    files = {
        "a.conll": conll(SENTENCES),
        "b.txt": conll(SENTENCES),  # token<TAB>tag on its first line: CoNLL-style
        "c.jsonl": "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in SENTENCES),
        "d.jsonl": "".join(json.dumps(span_record(w, t)) + "\n" for w, t in SENTENCES),
    }
    read = {}
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        read[name] = [(e.text, e.entities) for e in read_corpus([tmp_path / name])]
    assert read["a.conll"] == read["b.txt"] == read["c.jsonl"] == read["d.jsonl"]
    text, entities = read["a.conll"][1]
    assert [(text[e.start:e.end], e.label) for e in entities] == [("blue yoga mat", "PRODUCT"), ("São Paulo", "CITY"), ("tomorrow", "DATE")]
    assert read["a.conll"][2] == ("thanks !", ())  # a sentence without entities is still labelled (all O)
    first = next(iter(read_corpus([tmp_path / "a.conll"])))
    assert first.origin.endswith("a.conll line 1") and first.label_kind == "tokens"


def test_a_txt_of_labelled_texts_is_still_read_as_labelled_texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("refund\tI want my money back\nO\tthe letter O as a label, then a sentence\n", encoding="utf-8")
    examples = list(read_corpus([path]))
    assert [(e.label, e.label_kind) for e in examples] == [("refund", TEXT_LABEL), ("O", TEXT_LABEL)]


def test_the_sample_slot_corpus_reads_with_its_entities():
    train, heldout = (list(read_corpus([SAMPLES / name])) for name in ("slot_texts.jsonl", "slot_heldout.jsonl"))
    assert len(train) >= 400 and len(heldout) >= 140
    assert {e.label for e in train for e in e.entities} == {"ORDER_ID", "DATE", "PRODUCT", "CITY", "AMOUNT"}
    assert not {e.text.lower() for e in train} & {e.text.lower() for e in heldout}


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def family(request, wordpiece_tokenizer, bpe_tokenizer, unigram_tokenizer) -> Tokenizer:
    return {"wordpiece": wordpiece_tokenizer, "bpe": bpe_tokenizer, "unigram": unigram_tokenizer}[request.param]


@pytest.mark.parametrize("form", ["words", "spans"])
def test_each_unit_is_labelled_on_its_first_piece_and_reads_back_as_the_entities(family, form):
    """WordPiece, byte-level BPE and Unigram: every entity comes back, character-exact, from the tags on the first
    pieces; the other pieces are ignored; the ids are those the app's tokenizer gives for the sentence."""
    words = ["Order", "#A58213", "to", "São", "Paulo", "for", "€45.90", "on", "3/14", "pls"]
    tags = ["O", "B-ORDER_ID", "O", "B-CITY", "I-CITY", "O", "B-AMOUNT", "O", "B-DATE", "O"]
    record = span_record(words, tags)
    example = Example(record["text"], entities=tuple(Entity(**e) for e in record["entities"]),
                      words=tuple((s, s + len(w)) for s, w in zip(np.cumsum([0] + [len(w) + 1 for w in words]), words))
                      if form == "words" else None)
    encoding = family.encode(example.text)
    tagged = unit_tags(example.text, example.words, example.entities, encoding)
    labelled = [i for i, tag in enumerate(tagged) if tag is not None]
    assert len(labelled) < len(encoding.ids)  # some pieces are not first pieces (and the special tokens)
    if form == "words":  # the corpus's words are the units: one labelled piece per word
        assert [tagged[i] for i in labelled] == tags
    # each entity, read back from the units' tags as strict IOB2, spans exactly its characters
    def unit_end(k: int) -> int:  # a unit runs to its last piece before the next unit
        stop = labelled[k + 1] if k + 1 < len(labelled) else len(tagged)
        return max(encoding.offsets[i][1] for i in range(labelled[k], stop) if encoding.word_ids[i] is not None)

    found = sorted((example.text[encoding.offsets[labelled[first]][0]:unit_end(end - 1)].strip(), label)
                   for first, end, label in spans([tagged[i] for i in labelled]))
    assert found == sorted((example.text[e.start:e.end], e.label) for e in example.entities)


def test_an_entity_boundary_inside_a_piece_is_refused_naming_it(wordpiece_tokenizer):
    text = "my order now"  # 'order' (3-8) is one piece of the tiny vocabulary; a span 4-8 starts inside it
    encoding = wordpiece_tokenizer.encode(text)
    assert "order" in encoding.tokens
    with pytest.raises(CorpusError, match=r"corpus c.jsonl line 3: entity 'ORDER_ID' at 4-8 \('rder'\) begins or ends inside the piece 'order'"):
        unit_tags(text, None, (Entity(4, 8, "ORDER_ID"),), encoding, "corpus c.jsonl line 3")


def test_entity_metric_matches_a_hand_worked_seqeval_strict_iob2_example():
    """What seqeval's classification_report(true, pred, mode="strict", scheme=IOB2) gives on these sequences,
    worked by hand. Strict IOB2: the predicted I-LOC at 3 follows O, so it starts no entity (the lenient conlleval
    reading would count LOC 3-4 as found); exact match needs type and both boundaries."""
    true = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "I-LOC", "O", "B-ORG", "B-DATE"]
    pred = ["B-PER", "I-PER", "O", "I-LOC", "O", "B-LOC", "O", "O", "B-ORG", "B-ORG"]
    # true: PER 0-2, LOC 3-4, LOC 5-7, ORG 8-9, DATE 9-10 (5); predicted: PER 0-2, LOC 5-6, ORG 8-9, ORG 9-10 (4)
    # correct: PER 0-2, ORG 8-9 (2). precision 2/4, recall 2/5, F1 2*0.5*0.4/0.9 = 0.4444
    # per type: PER 1/1, 1/1; LOC 0/1, 0/2; ORG 1/2, 1/1 -> F1 0.6667; DATE 0/0, 0/1 -> 0
    assert spans(pred) == {(0, 2, "PER"), (5, 6, "LOC"), (8, 9, "ORG"), (9, 10, "ORG")}
    names = label_names({"PER", "LOC", "ORG", "DATE"})
    index = {name: i for i, name in enumerate(names)}
    # two texts: units interleaved with ignored pieces (-100) and special tokens, which are not compared
    rows_true, rows_pred = [], []
    for part in (slice(0, 5), slice(5, 10)):
        t, p = [index["O"]], [index["O"]]  # [CLS]
        for a, b in zip(true[part], pred[part]):
            t += [index[a], IGNORED]
            p += [index[b], index["B-DATE"]]  # a continuation piece's prediction does not count
        rows_true.append([IGNORED] + t[1:] + [IGNORED])
        rows_pred.append(p + [index["O"]])
    score = TASKS["token-classification"].metric(rows_pred, rows_true, names)
    figures = score.figures
    assert score.value == pytest.approx(0.444444, abs=1e-6) == figures["entity_f1"]
    assert (figures["entity_precision"], figures["entity_recall"]) == (0.5, 0.4)
    per = figures["entity_per_label"]
    assert per["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per["ORG"]["f1"] == pytest.approx(2 / 3) and per["ORG"]["precision"] == 0.5
    assert per["DATE"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_word_dropout_keeps_the_labels_aligned_with_the_pieces():
    ids = [101, 7, 8, 9, 10, 11, 102]
    labels = [IGNORED, 1, IGNORED, 3, 4, 0, IGNORED]  # word (1-3): one unit; word (3-5): two units (a boundary)
    spans_ = [(1, 3), (3, 5), (5, 6)]
    out_ids, out_labels = drop_words(ids, spans_, 1.0, lambda word: [0], random.Random(0), labels=labels)
    assert out_ids == [101, 0, 9, 10, 0, 102]  # the two-unit word is kept whole
    assert out_labels == [IGNORED, 1, 3, 4, 0, IGNORED]
    assert len(out_ids) == len(out_labels)


EXPORTS = {  # model fixture, --oov, --eval file: each family, and each policy, once
    "wordpiece-auto": ("tiny_bert", "auto", True),
    # no --eval: a byte-level BPE model (no UNK) cannot encode a held-out word the corpus lacks for the training-time
    # figure, whatever the task (pipeline._training_sets maps dropped ids to UNK; a known limitation)
    "bpe-remap": ("tiny_roberta", "remap", False),
    "unigram-fallback": ("tiny_xlm_roberta", "fallback", True),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_export_under_each_oov_policy_answers_per_token_as_verified(case, request, tmp_path):
    fixture, oov, with_eval = EXPORTS[case]
    folder = request.getfixturevalue(fixture)
    corpus, heldout = tmp_path / "slots.conll", tmp_path / "heldout.jsonl"
    lines = (SAMPLES / "slot_texts.jsonl").read_text(encoding="utf-8").splitlines()
    corpus.write_text(conll(_tagged(json.loads(line)) for line in lines[:48]), encoding="utf-8")
    heldout.write_text("\n".join((SAMPLES / "slot_heldout.jsonl").read_text(encoding="utf-8").splitlines()[:12]) + "\n")
    out = tmp_path / "bundle" / "model.onnx"
    manifest = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(folder), oov=oov,
                                 eval_file=str(heldout) if with_eval else None, quantize="none",
                                 train=TrainOptions(epochs=2, lr=1e-3))).manifest.to_json()

    assert manifest["model"]["task"] == "token-classification"
    assert manifest["model"]["architecture"].endswith("ForTokenClassification")
    labels = manifest["training"]["labels"]
    assert labels[0] == "O" and len(labels) == 11  # O + B/I of the five types
    assert set(manifest["training"]["eval_entity_per_label"]) <= {"ORDER_ID", "DATE", "PRODUCT", "CITY", "AMOUNT"}
    assert 0 <= manifest["training"]["eval_entity_f1"] <= 1
    if with_eval:
        assert 0 <= manifest["heldout"]["entity_f1"] <= 1 and manifest["heldout"]["accuracy"] is None
    assert manifest["parity"]["tokenization_mismatches"] == 0 and manifest["parity"]["max_abs_diff"] <= 1e-4
    expected_oov = "tail" if oov == "auto" else oov  # 48 sentences leave 256+ of the 600 rows for a compressed tail
    assert manifest["vocab"]["oov"] == expected_oov
    config = json.loads((out.parent / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(labels))] == labels  # what transformers.js names
    shipped = Tokenizer.from_file(str(out.parent / "tokenizer.json"))
    ids = np.array([shipped.encode("where is order #A58213 going to Lyon").ids], dtype=np.int64)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    feeds.update({"token_type_ids": np.zeros_like(ids)} if "token_type_ids" in {i.name for i in session.get_inputs()} else {})
    assert session.run(["logits"], feeds)[0].shape == (1, ids.shape[1], len(labels))


def _tagged(record: dict) -> tuple[list[str], list[str]]:
    """A sample span record as whitespace words and IOB2 tags (the samples' spans cover whole words)."""
    words, tags, position = [], [], 0
    for word in record["text"].split(" "):
        start = record["text"].index(word, position)
        position = start + len(word)
        entity = next((e for e in record["entities"] if e["start"] <= start < e["end"]), None)
        words.append(word)
        tags.append("O" if entity is None else ("B-" if start == entity["start"] else "I-") + entity["label"])
    return [w for w in words if w], [t for w, t in zip(words, tags) if w]

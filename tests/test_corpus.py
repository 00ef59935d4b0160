import json

import pytest

from pema_export.corpus import CorpusSummary, load_examples, read_corpus
from pema_export.errors import CorpusError


def write(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_txt_lines_with_and_without_labels(tmp_path):
    path = write(tmp_path, "a.txt", "refund\tI want my money back\n\n  where is my order  \r\n")
    assert [(e.text, e.label) for e in read_corpus([path])] == [
        ("I want my money back", "refund"),
        ("where is my order", None),
    ]


def test_tsv_csv_and_jsonl_read_text_and_label_columns(tmp_path):
    tsv = write(tmp_path, "a.tsv", "label\ttext\nrefund\tmoney back please\n")
    csv = write(tmp_path, "b.csv", 'text,label\n"hello, there",greet\n')
    jsonl = write(tmp_path, "c.jsonl", json.dumps({"text": "café au lait", "label": 3}) + "\n")
    examples = list(read_corpus([tsv, csv, jsonl]))
    assert [(e.text, e.label) for e in examples] == [
        ("money back please", "refund"),
        ("hello, there", "greet"),
        ("café au lait", "3"),
    ]


def test_several_corpora_are_a_union_in_order(tmp_path):
    first = write(tmp_path, "1.txt", "one\n")
    second = write(tmp_path, "2.txt", "two\n")
    assert [e.text for e in read_corpus([first, second])] == ["one", "two"]


def test_non_utf8_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.txt", b"fine\nalso fine\n\xff\xfe broken\n")
    with pytest.raises(CorpusError, match=r"bad.txt line 3 is not UTF-8"):
        list(read_corpus([path]))


def test_table_without_text_column_is_refused(tmp_path):
    path = write(tmp_path, "a.csv", "sentence,label\nhi,x\n")
    with pytest.raises(CorpusError, match="no 'text' column"):
        list(read_corpus([path]))


def test_jsonl_mixed_label_types_and_bad_json_are_named(tmp_path):
    mixed = write(tmp_path, "m.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(CorpusError, match="line 2.*mixed label types"):
        list(read_corpus([mixed]))
    broken = write(tmp_path, "b.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(CorpusError, match="b.jsonl line 2 is not valid JSON"):
        list(read_corpus([broken]))


def test_missing_empty_and_textless_corpora(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        list(read_corpus([tmp_path / "nope.txt"]))
    with pytest.raises(CorpusError, match="empty"):
        list(read_corpus([write(tmp_path, "e.txt", "")]))
    with pytest.raises(CorpusError, match="no texts after parsing"):
        load_examples([write(tmp_path, "blank.txt", "\n   \n\t\n")])


def test_partly_labelled_corpus_is_refused(tmp_path):
    path = write(tmp_path, "p.txt", "a\tlabelled text\nunlabelled text\n")
    with pytest.raises(CorpusError, match="partly labelled"):
        load_examples([path])


def test_summary_streams_and_samples_deterministically(tmp_path):
    path = write(tmp_path, "big.txt", "".join(f"text number {i}\n" for i in range(5000)))
    samples = []
    for _ in range(2):
        summary = CorpusSummary(sample_size=100, seed=7)
        assert sum(1 for _ in summary.observe(read_corpus([path]))) == 5000
        samples.append(summary.sample_texts)
    assert samples[0] == samples[1]
    assert len(samples[0]) == 100 and len(set(samples[0])) == 100
    numbers = [int(t.split()[-1]) for t in samples[0]]
    assert numbers == sorted(numbers) and numbers[-1] > 2500  # corpus order, drawn from the whole stream

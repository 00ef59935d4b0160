"""Every family exports end to end, and the written tokenizer gives the same ids in Python and in JavaScript.

Tiny random RoBERTa (byte-level BPE), XLM-R (Unigram), ALBERT (Unigram + SentencePiece .model) and ELECTRA
(WordPiece) models with tokenizers trained here; the bundles are read back by transformers, onnxruntime,
SentencePiece and transformers.js (node, offline).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from conftest import REPO, SAMPLES, TRAINING_TEXT, sample_head
from pema_export.errors import TokenizerError
from pema_export.pipeline import ExportOptions, run

FAMILY_MODELS = {"roberta": "tiny_roberta", "xlm-roberta": "tiny_xlm_roberta", "albert": "tiny_albert", "electra": "tiny_electra"}
CORPUS_TEXTS = TRAINING_TEXT[:40] + ["café crème brûlée 😀 日本", "¿dónde está mi pedido?", "<mask> and [MASK] stay special"]
# Texts the corpus never had: the tokenizers must still agree with each other on them.
UNSEEN_TEXTS = ["Pierogi, bibimbap y gyoza — ngl 🍜", "Ünïcödé ÀÉÎ ß 中文 한국어", "", "x" * 150]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("family-corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS_TEXTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def labelled_file(tmp_path_factory):
    return sample_head(tmp_path_factory.mktemp("family-labelled"), "app_texts.txt", 60, name="corpus.txt")


@pytest.fixture(scope="module")
def bundles(request, tmp_path_factory, corpus_file, labelled_file) -> dict:
    """{family: (source folder, bundle folder, manifest)}; XLM-R is fine-tuned on a labelled corpus."""
    exported = {}
    for family, fixture in FAMILY_MODELS.items():
        source = request.getfixturevalue(fixture)
        out = tmp_path_factory.mktemp(f"bundle-{family}") / family / "model.onnx"
        corpus = labelled_file if family == "xlm-roberta" else corpus_file
        result = run(ExportOptions(corpus=[str(corpus)], out=str(out), model=str(source), oov="unk", eval_split=0.2))
        exported[family] = (source, out.parent, result.manifest.to_json())
    return exported


def corpus_texts(family: str) -> list[str]:
    if family == "xlm-roberta":
        return [line.split("\t", 1)[1] for line in (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[:60]]
    return CORPUS_TEXTS


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_bundle_tokenizer_gives_original_ids_mapped_and_loads_in_transformers(bundles, family):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source, bundle, manifest = bundles[family]
    original = Tokenizer.from_file(str(source / "tokenizer.json"))
    original.no_padding()
    original.no_truncation()
    pruned = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    kept_tokens = sorted(pruned.get_vocab(with_added_tokens=True), key=pruned.token_to_id)
    id_map = {original.token_to_id(token): new for new, token in enumerate(kept_tokens)}

    assert manifest["vocab"]["kept"] == len(kept_tokens) == config["vocab_size"] < manifest["vocab"]["original"]
    assert manifest["parity"]["tokenization_mismatches"] == 0
    assert manifest["parity"]["tokenization_texts_checked"] == len(corpus_texts(family))
    loaded = AutoTokenizer.from_pretrained(bundle)
    assert isinstance(loaded, PreTrainedTokenizerFast)
    for text in corpus_texts(family):
        expected = [id_map[i] for i in original.encode(text).ids]
        assert pruned.encode(text).ids == expected, text
        assert loaded(text)["input_ids"] == expected, text
    # Special-token ids in config.json name the same tokens as before.
    source_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(source_config.get(field), int):
            assert pruned.id_to_token(config[field]) == original.id_to_token(source_config[field])


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_bundle_model_embedding_has_exactly_the_kept_rows(bundles, family):
    _source, bundle, manifest = bundles[family]
    graph = onnx.load(str(bundle / "model.onnx"))
    # Whatever the target did to the graph (fusions, int8), the vocabulary matrix has the kept rows, not the original's.
    first_dims = {tuple(init.dims)[0] for init in graph.graph.initializer if len(init.dims) == 2}
    assert manifest["vocab"]["kept"] in first_dims and manifest["vocab"]["original"] not in first_dims
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])

    def run_ids(token_id: int):
        ids = np.array([[token_id]], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in {i.name for i in session.get_inputs()}:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return session.run(None, feeds)[0]

    # The largest id the pruned tokenizer can produce runs; one more is out of the embedding's range.
    assert np.isfinite(run_ids(manifest["vocab"]["kept"] - 1)).all()
    with pytest.raises(Exception, match="out of"):
        run_ids(manifest["vocab"]["kept"])


def test_albert_bundle_ships_a_pruned_sentencepiece_model(bundles):
    import sentencepiece

    _source, bundle, manifest = bundles["albert"]
    assert "spiece.model" in manifest["files"]
    processor = sentencepiece.SentencePieceProcessor(model_file=str(bundle / "spiece.model"))
    pruned = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    assert [processor.id_to_piece(i) for i in range(processor.get_piece_size())] == [p for p, _ in pruned["model"]["vocab"]]


def test_transformers_js_gives_the_same_ids_offline(bundles, tmp_path):
    """The bundle's tokenizer in a real JavaScript client (transformers.js on node, no network)."""
    package = REPO / "node_modules" / "@huggingface" / "transformers"
    node = shutil.which("node")
    if node is None or not package.is_dir():
        pytest.fail(
            "transformers.js is not installed: run `make setup` (ONNXRUNTIME_NODE_INSTALL=skip npm ci) with Node 20; "
            f"node={'found' if node else 'missing'}, {package.relative_to(REPO)} {'found' if package.is_dir() else 'missing'}"
        )
    texts = CORPUS_TEXTS + UNSEEN_TEXTS
    folders = {family: str(bundle) for family, (_source, bundle, _manifest) in sorted(bundles.items())}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"folders": list(folders.values()), "texts": texts}), encoding="utf-8")
    done = subprocess.run(
        [node, str(REPO / "tests" / "js" / "tokenize.mjs"), str(request)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    js_ids = json.loads(done.stdout)
    for family, folder in folders.items():
        pruned = Tokenizer.from_file(str(bundles[family][1] / "tokenizer.json"))
        for text, ids in zip(texts, js_ids[folder]):
            assert ids == pruned.encode(text).ids, f"{family}: {text!r}"


def test_a_tokenizer_that_is_not_fast_is_refused(tmp_path, tiny_bert, corpus_file):
    slow_only = tmp_path / "slow-bert"
    shutil.copytree(tiny_bert, slow_only)
    (slow_only / "tokenizer.json").unlink()
    (slow_only / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json: pema-export needs a fast \(Rust\) tokenizer"):
        run(ExportOptions(corpus=[str(corpus_file)], out=str(tmp_path / "b" / "model.onnx"), model=str(slow_only)))
    assert not (tmp_path / "b").exists()


def test_an_unhandled_family_is_refused_by_the_cli(tmp_path, tiny_bert, corpus_file):
    from tokenizers import models, pre_tokenizers

    from conftest import run_cli

    word_level = tmp_path / "word-level"
    shutil.copytree(tiny_bert, word_level)
    tokenizer = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "hello": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(word_level / "tokenizer.json"))
    done = run_cli("--model", word_level, "--corpus", corpus_file, "--out", tmp_path / "b" / "model.onnx")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pema-export: error: tokenizer family WordLevel is not supported (supported: BPE, Unigram, WordPiece); refusing to export"
    ]
    assert not (tmp_path / "b").exists()

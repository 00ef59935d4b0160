"""Shared fixtures: tiny random models with tokenizers trained here (no network), and the real embedded MiniLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"

# Enough text to train a small WordPiece vocabulary that still lacks many of its words' pieces.
TRAINING_TEXT = [
    line.split("\t", 1)[-1] for line in (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines() if line
] + [line for line in (SAMPLES / "search_texts.txt").read_text(encoding="utf-8").splitlines() if line]


def train_wordpiece(vocab_size: int = 600):
    """A BERT-style uncased WordPiece tokenizer trained on the samples, with [CLS] x [SEP] templates."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, continuing_subword_prefix="##")
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tokenizer


def save_tiny_model(folder: Path, model_type: str, tokenizer, **config_overrides) -> Path:
    """A tiny randomly initialised model of ``model_type`` with ``tokenizer`` as its tokenizer.json."""
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    sizes = {
        "bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128),
        "distilbert": dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128),
    }[model_type]
    config = AutoConfig.for_model(
        model_type, vocab_size=tokenizer.get_vocab_size(), pad_token_id=tokenizer.token_to_id("[PAD]"), **sizes, **config_overrides
    )
    folder.mkdir(parents=True, exist_ok=True)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
    }))
    return folder


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    return train_wordpiece()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, wordpiece_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert", wordpiece_tokenizer)


@pytest.fixture(scope="session")
def tiny_sentence_encoder(tmp_path_factory, wordpiece_tokenizer) -> Path:
    """tiny_bert as a sentence-transformers folder: mean pooling, normalized (all-MiniLM-L6-v2's modules)."""
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny-st"), "bert", wordpiece_tokenizer)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory, wordpiece_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert", wordpiece_tokenizer)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_bert) -> Path:
    """tiny_bert exported for the cpu target on the search texts (no training): a real bundle to measure; read only."""
    from pema_export.cli import main

    out = tmp_path_factory.mktemp("bundle") / "model.onnx"
    assert main(["--model", str(tiny_bert), "--corpus", str(SAMPLES / "search_texts.txt"), "--out", str(out), "--quiet"]) == 0
    return out.parent


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from pema_export.models import resolve_model

    return resolve_model(None).path


def sample_head(folder: Path, sample: str, lines: int, name: str | None = None) -> Path:
    """A corpus file in ``folder`` holding the first ``lines`` lines of ``samples/<sample>``."""
    head = (SAMPLES / sample).read_text(encoding="utf-8").splitlines()[:lines]
    path = folder / (name or sample)
    path.write_text("\n".join(head) + "\n", encoding="utf-8")
    return path


def urgent_or_normal(folder: Path, sample: str, lines: int, name: str) -> Path:
    """The sample's texts, every other one starting with "urgent " and labelled so: a rule a tiny model learns in a
    few epochs (the six intents it does not), so a held-out accuracy says whether a bundle learned anything."""
    texts = [line.split("\t", 1)[1] for line in (SAMPLES / sample).read_text(encoding="utf-8").splitlines()[:lines]]
    path = folder / name
    path.write_text("".join(("urgent\turgent " if i % 2 else "normal\t") + text + "\n" for i, text in enumerate(texts)),
                    encoding="utf-8")
    return path


@pytest.fixture()
def labelled_corpus(tmp_path) -> Path:
    """A small labelled .txt corpus (the first 120 sample lines: all six labels)."""
    return sample_head(tmp_path, "app_texts.txt", 120, name="corpus.txt")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it; ``python -m pema_export`` where the project is on the path but
    not installed (a GPU machine that runs ``pytest -m gpu`` from a copy of the repository)."""
    exe = shutil.which("pema-export", path=str(Path(sys.executable).parent)) or shutil.which("pema-export")
    command = [exe] if exe else [sys.executable, "-m", "pema_export"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900)


# --- Tiny models of every tokenizer family (issue 3): RoBERTa (byte-level BPE), XLM-R (Unigram trained with
# `tokenizers`), ALBERT (a real SentencePiece .model, converted by transformers), ELECTRA (WordPiece). ---

ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def train_byte_level_bpe(vocab_size: int = 700):
    """A RoBERTa/GPT-2-style byte-level BPE tokenizer trained on the samples, <s> x </s> around each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")), add_prefix_space=False
    )
    return tokenizer


def train_unigram(vocab_size: int = 800):
    """An XLM-R-style Unigram tokenizer (Metaspace, <s> x </s>) trained with `tokenizers` on the samples."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, unk_token="<unk>")
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    return tokenizer


def train_albert_sentencepiece(folder: Path, vocab_size: int = 700) -> Path:
    """ALBERT's tokenizer as it ships: spiece.model trained by SentencePiece, tokenizer.json converted by transformers."""
    import io

    import sentencepiece
    from transformers import AlbertTokenizerFast

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        character_coverage=0.9995, seed_sentencepiece_size=100_000, num_threads=1, minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    AlbertTokenizerFast(vocab_file=str(folder / "spiece.model")).save_pretrained(folder)
    return folder


def save_tiny_family_model(folder: Path, model_type: str, tokenizer_config: dict, tokenizer=None, head: str = "base", **config) -> Path:
    """A tiny random ``model_type`` (``head``: "base" or "mlm") beside its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    model_config = AutoConfig.for_model(model_type, vocab_size=len(fast), max_position_embeddings=130, **config)
    auto = AutoModelForMaskedLM if head == "mlm" else AutoModel
    auto.from_config(model_config).save_pretrained(folder)
    return folder


ROBERTA_TOKENIZER_CONFIG = {
    "tokenizer_class": "RobertaTokenizer", "model_max_length": 128, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>",
}
XLMR_TOKENIZER_CONFIG = {**ROBERTA_TOKENIZER_CONFIG, "tokenizer_class": "XLMRobertaTokenizer"}
ELECTRA_TOKENIZER_CONFIG = {
    "tokenizer_class": "ElectraTokenizer", "do_lower_case": True, "model_max_length": 128,
    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
}
ROBERTA_IDS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_byte_level_bpe()


@pytest.fixture(scope="session")
def unigram_tokenizer():
    return train_unigram()


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, bpe_tokenizer) -> Path:
    return save_tiny_family_model(
        tmp_path_factory.mktemp("tiny-roberta"), "roberta", ROBERTA_TOKENIZER_CONFIG, bpe_tokenizer, **TINY_SIZES, **ROBERTA_IDS
    )


@pytest.fixture(scope="session")
def tiny_xlm_roberta(tmp_path_factory, unigram_tokenizer) -> Path:
    return save_tiny_family_model(
        tmp_path_factory.mktemp("tiny-xlmr"), "xlm-roberta", XLMR_TOKENIZER_CONFIG, unigram_tokenizer, **TINY_SIZES, **ROBERTA_IDS
    )


@pytest.fixture(scope="session")
def albert_tokenizer_folder(tmp_path_factory) -> Path:
    """spiece.model + the tokenizer.json transformers converts from it (no model)."""
    return train_albert_sentencepiece(tmp_path_factory.mktemp("albert-tokenizer"))


@pytest.fixture(scope="session")
def tiny_albert(tmp_path_factory, albert_tokenizer_folder) -> Path:
    folder = tmp_path_factory.mktemp("tiny-albert")
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(albert_tokenizer_folder / name, folder / name)
    return save_tiny_family_model(
        folder, "albert", {}, embedding_size=16, pad_token_id=0, bos_token_id=2, eos_token_id=3, **TINY_SIZES
    )


@pytest.fixture(scope="session")
def tiny_electra(tmp_path_factory, wordpiece_tokenizer) -> Path:
    return save_tiny_family_model(
        tmp_path_factory.mktemp("tiny-electra"), "electra", ELECTRA_TOKENIZER_CONFIG, wordpiece_tokenizer,
        embedding_size=16, pad_token_id=0, **TINY_SIZES,
    )


BASELINES = REPO / "tests" / "baselines"


def check_size_baseline(bundle_dir: Path, name: str, tolerance: str = "2%") -> None:
    """Size-regression check of a sample bundle against tests/baselines/NAME.json (`pema-export check --baseline`).

    PEMA_UPDATE_BASELINES=1 rewrites the baseline instead: do that only for a size change you mean."""
    import os

    from pema_export.cli import main as cli_main

    manifest = json.loads((bundle_dir / "pema-manifest.json").read_text())
    baseline = BASELINES / f"{name}.json"
    if os.environ.get("PEMA_UPDATE_BASELINES") == "1":
        BASELINES.mkdir(exist_ok=True)
        keep = {"model": manifest["model"], "target": manifest["target"], "vocab": {"original": manifest["vocab"]["original"], "kept": manifest["vocab"]["kept"]},
                "files": {file: {"bytes": entry["bytes"]} for file, entry in manifest["files"].items()}}
        baseline.write_text(json.dumps(keep, indent=2) + "\n")
    assert baseline.is_file(), f"no size baseline {baseline}: run the test once with PEMA_UPDATE_BASELINES=1 and commit it"
    assert cli_main(["check", str(bundle_dir), "--baseline", str(baseline), "--tolerance", tolerance]) == 0, (
        f"the bundle grew past {baseline} (see the lines above); if that is intended, update it with PEMA_UPDATE_BASELINES=1"
    )


def train_sentencepiece_xlmr(folder: Path) -> Path:
    """An XLM-R-style tokenizer as it ships: a SentencePiece Unigram .model and transformers' tokenizer.json for it."""
    import io

    import sentencepiece
    from transformers import XLMRobertaTokenizerFast

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT), model_writer=model, vocab_size=700, model_type="unigram",
        character_coverage=0.9995, num_threads=1, minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    XLMRobertaTokenizerFast(vocab_file=str(folder / "sentencepiece.bpe.model")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_xlmr_sentencepiece(tmp_path_factory) -> Path:
    """A tiny XLM-R with a real SentencePiece .model beside its tokenizer.json (what the in-graph Unigram runs)."""
    folder = train_sentencepiece_xlmr(tmp_path_factory.mktemp("tiny-xlmr-spm"))
    return save_tiny_family_model(folder, "xlm-roberta", XLMR_TOKENIZER_CONFIG, **TINY_SIZES, **ROBERTA_IDS)


@pytest.fixture(scope="session")
def tiny_full_vocab(tmp_path_factory) -> Path:
    """A tiny random BERT (32 wide) with all-MiniLM-L6-v2's real 30,522-token tokenizer: plenty of rows outside any
    small corpus, at tiny-model speed."""
    from tokenizers import Tokenizer

    from pema_export.models import resolve_model

    tokenizer = Tokenizer.from_file(str(resolve_model(None).tokenizer_json))
    return save_tiny_model(tmp_path_factory.mktemp("tiny-full-vocab"), "bert", tokenizer)


def transformers_js_outputs(bundle: Path, texts: list[str], dtypes: list[str], tmp_path: Path) -> tuple[list[list[int]], dict]:
    """A web bundle through transformers.js in Node (tests/js/web_bundle.mjs) on the Python tokenizer's ids of
    ``texts``: (those ids, {dtype: {"name", "values"}}); its own tokenizer must give the same ids."""
    from pema_export.vocab import open_tokenizer

    if not (REPO / "node_modules" / "@huggingface" / "transformers").is_dir() or not shutil.which("node"):
        pytest.fail("transformers.js is not installed: run `make setup` (npm ci) first")
    ids = [e.ids for e in open_tokenizer(bundle / "tokenizer.json").encode_batch(texts)]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"folder": str(bundle), "texts": texts, "ids": ids, "dtypes": dtypes}))
    done = subprocess.run(["node", str(REPO / "tests/js/web_bundle.mjs"), str(request)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["ids"] == ids
    return ids, result["outputs"]

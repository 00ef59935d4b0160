"""Shared fixtures: tiny random models with tokenizers trained here (no network), and the real embedded MiniLM."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
def tiny_distilbert(tmp_path_factory, wordpiece_tokenizer) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-distilbert"), "distilbert", wordpiece_tokenizer)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from pema_export.models import resolve_model

    return resolve_model(None).path


@pytest.fixture()
def labelled_corpus(tmp_path) -> Path:
    """A small labelled .txt corpus (the first 120 sample lines: all six labels)."""
    lines = (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[:120]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = shutil.which("pema-export", path=str(Path(sys.executable).parent)) or "pema-export"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900)

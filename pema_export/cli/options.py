"""The option groups the export and ``pema-export scan`` share, and their checks, in one place."""

from __future__ import annotations

import argparse

from pema_export.errors import PemaError
from pema_export.oov import CHOICES as OOV_CHOICES
from pema_export.oov import DEFAULT as DEFAULT_OOV

# options that count something: at least 1 wherever they are given
_AT_LEAST_ONE = ("epochs", "batch_size", "max_length", "min_count", "max_vocab", "prior_words")


def add_model_and_corpus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="local model folder, Hugging Face hub id, or alias (distilbert, bert, minilm); "
                        "default: the embedded all-MiniLM-L6-v2")
    parser.add_argument("--corpus", action="append", required=True, metavar="FILE",
                        help="app texts: .txt (label<TAB>text or text), .tsv/.csv (text[,label]), .jsonl; tagged "
                        "sentences (token classification): .conll/.txt (token<TAB>tag), .jsonl (tokens+tags, or text+"
                        "entities); repeatable")


def add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="cpu", help="target profile name or path to a .toml profile (default: cpu; "
                        "list: pema-export targets)")
    parser.add_argument("--quantize", metavar="none|int8|fp16", help="number format, overriding the target profile's; "
                        "int8/fp16 must agree with fp32 on >= 99%% of corpus texts (docs/targets.md)")


def add_vocabulary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-tokens", metavar="FILE", help="tokens or texts (one per line) whose tokens must be kept")
    parser.add_argument("--min-count", type=int, default=1, help="keep tokens used at least this often (default 1)")
    parser.add_argument("--oov", choices=OOV_CHOICES, default=DEFAULT_OOV,
                        help="text the corpus never had: 'fallback' keeps every single-character piece so unseen words "
                        "degrade to known characters; 'unk' keeps only what the corpus uses; 'remap' ships the original "
                        "tokenizer and runs each dropped token as its nearest kept token (a table in the graph); "
                        "'auto': for a labelled corpus unk with --oov-dropout 0.1, otherwise remap unless its bundle "
                        "would be over 2%% larger than fallback's "
                        f"(default {DEFAULT_OOV}; see docs/oov.md for the measurement)")
    parser.add_argument("--max-vocab", type=int, metavar="N", help="keep at most N tokens: special, --keep-tokens and "
                        "--oov pieces, then corpus tokens, then --prior-words tokens, by expected benefit")
    parser.add_argument("--max-bytes", metavar="SIZE", help="the largest vocabulary, by expected benefit, whose predicted "
                        "bundle for the target fits SIZE (bytes, or '16 MB')")
    parser.add_argument("--prior-words", type=int, metavar="N", help="also keep the tokens of the N most frequent words "
                        "of the corpus's language(s) (wordfreq lists, offline)")
    parser.add_argument("--prior-lang", metavar="LANG[,LANG]", help="languages for --prior-words (default: detected)")


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of whichever of the shared options ``args`` has, before any work."""
    for name in _AT_LEAST_ONE:
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise PemaError(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "eval_split", None) is not None and not 0 < args.eval_split < 1:
        raise PemaError("--eval-split must be between 0 and 1")
    if getattr(args, "lr", None) is not None and args.lr <= 0:
        raise PemaError("--lr must be positive")
    if getattr(args, "oov_dropout", None) is not None and not 0 <= args.oov_dropout < 1:
        raise PemaError("--oov-dropout must be at least 0 and below 1")


def languages(prior_lang: str | None) -> list[str] | None:
    """--prior-lang "en, de" -> ["en", "de"]; None: detect them from the corpus."""
    return [lang.strip() for lang in prior_lang.split(",") if lang.strip()] if prior_lang else None


def max_bytes(size: str | None) -> int | None:
    from pema_export.budget import parse_size

    return parse_size(size, "--max-bytes") if size is not None else None

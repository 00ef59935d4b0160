"""The option groups the export and ``pema-export scan`` share, and their checks, in one place."""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from pema_export.errors import PemaError, UsageError
from pema_export.oov import CHOICES as OOV_CHOICES
from pema_export.oov import DEFAULT as DEFAULT_OOV
from pema_export.profiles import TOKENIZERS

# options that count something: at least 1 wherever they are given
_AT_LEAST_ONE = ("epochs", "batch_size", "max_length", "min_count", "max_vocab", "prior_words", "tail_row_bytes")


class Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument raises UsageError (one line, exit 2, from cli.main) instead of printing
    the whole usage block before the message."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("pema-export").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


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
    parser.add_argument("--tokenizer", choices=TOKENIZERS, help="where the app's text becomes ids: 'ids' (default) "
                        "ships tokenizer.json for the app to run and a model that takes input_ids; 'in-graph' puts the "
                        "tokenizer in the model (onnxruntime-extensions ops, exact or refused): the model takes a batch "
                        "of strings, for the cpu, android and ios targets (docs/string-input.md)")


def add_vocabulary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-tokens", metavar="FILE", help="tokens or texts (one per line) whose tokens must be kept")
    parser.add_argument("--min-count", type=int, default=1, help="keep tokens used at least this often (default 1)")
    parser.add_argument("--oov", choices=OOV_CHOICES, default=DEFAULT_OOV,
                        help="text the corpus never had: 'fallback' keeps every single-character piece so unseen words "
                        "degrade to known characters; 'unk' keeps only what the corpus uses; 'remap' ships the original "
                        "tokenizer and runs each dropped token as its nearest kept token (a table in the graph); "
                        "'tail' ships the original tokenizer, the corpus's rows exact and every other row as a compact "
                        "code of its pretrained value, decoded in the graph; "
                        "'auto': tail when at least 256 rows lie outside the corpus (an encoder also keeps exact the "
                        "rows of its language's 2,000 most frequent words), otherwise unk with --oov-dropout 0.1 for a "
                        "labelled corpus and remap or fallback for an encoder "
                        f"(default {DEFAULT_OOV}; see docs/oov.md for the measurement)")
    parser.add_argument("--max-vocab", type=int, metavar="N", help="keep at most N tokens: special, --keep-tokens and "
                        "--oov pieces, then corpus tokens, then --prior-words tokens, by expected benefit")
    parser.add_argument("--max-bytes", metavar="SIZE", help="the largest vocabulary, by expected benefit, whose predicted "
                        "bundle for the target fits SIZE (bytes, or '16 MB')")
    parser.add_argument("--prior-words", type=int, metavar="N", help="also keep the tokens of the N most frequent words "
                        "of the corpus's language(s) (wordfreq lists, offline)")
    parser.add_argument("--prior-lang", metavar="LANG[,LANG]", help="languages for --prior-words, or for the words "
                        "--oov auto keeps for an encoder (default: detected from the corpus)")
    parser.add_argument("--tail-row-bytes", type=int, metavar="N", help="--oov tail: bytes per compressed row, a "
                        "divisor of the embedding width (default: width/2 where the model files are fp32 or fp16, width/4 "
                        "where they are int8; docs/oov.md)")


def check_ranges(args: argparse.Namespace) -> None:
    """Refuse out-of-range values of whichever of the shared options ``args`` has, before any work."""
    for name in _AT_LEAST_ONE:
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise PemaError(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "eval_split", None) is not None and not 0 < args.eval_split < 1:
        raise PemaError("--eval-split must be between 0 and 1")
    if getattr(args, "lr", None) is not None and not (0 < args.lr < math.inf):
        raise PemaError(f"--lr must be a positive number, not {args.lr}")
    if getattr(args, "oov_dropout", None) is not None and not 0 <= args.oov_dropout < 1:
        raise PemaError("--oov-dropout must be at least 0 and below 1")
    if getattr(args, "seed", None) is not None and not 0 <= args.seed < 2**32:
        raise PemaError(f"--seed must be between 0 and {2**32 - 1}")  # numpy's and torch's seed range
    if getattr(args, "prior_lang", None) is not None:
        if not args.prior_words and getattr(args, "oov", None) != "auto":  # auto may keep an encoder's prior words
            raise PemaError("--prior-lang names the languages of --prior-words N: pass --prior-words too")
        if not languages(args.prior_lang):
            raise PemaError(f"--prior-lang {args.prior_lang!r} names no language (e.g. en or en,de)")


def languages(prior_lang: str | None) -> list[str] | None:
    """--prior-lang "en, de" -> ["en", "de"]; None: detect them from the corpus."""
    return [lang.strip() for lang in prior_lang.split(",") if lang.strip()] if prior_lang else None


def max_bytes(size: str | None) -> int | None:
    from pema_export.budget import parse_size

    return parse_size(size, "--max-bytes") if size is not None else None

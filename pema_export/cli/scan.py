"""``pema-export scan``: tokenize the corpus only and print what the export would keep and write."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from pema_export.cli import options


def parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="pema-export scan", description="Tokenize the corpus only (no training) "
                                     "and predict the kept vocabulary and the bundle's bytes for a target.")
    options.add_model_and_corpus(parser)
    options.add_target(parser)
    parser.add_argument("--heldout", metavar="FILE", help="texts the corpus does not contain: report their UNK rate")
    options.add_vocabulary(parser)
    parser.add_argument("--json", action="store_true")
    return parser


def run(argv: Sequence[str]) -> int:
    from pema_export.scan import ScanOptions, scan_report

    args = parser().parse_args(argv)
    options.check_ranges(args)
    report = scan_report(ScanOptions(
        corpus=args.corpus, model=args.model, target=args.target, quantize=args.quantize, keep_tokens=args.keep_tokens,
        min_count=args.min_count, oov=args.oov, max_vocab=args.max_vocab, max_bytes=options.max_bytes(args.max_bytes),
        prior_words=args.prior_words, prior_lang=options.languages(args.prior_lang), heldout=args.heldout,
        tail_row_bytes=args.tail_row_bytes, tokenizer=args.tokenizer,
    ))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    vocab, predicted = report["vocab"], report["predicted_bytes"]
    print(f"corpus      {report['texts']:,} texts, {report['tokens']:,} tokens, {vocab['corpus_used']:,} distinct ids")
    print(f"vocab       {vocab['kept']:,} of {vocab['original']:,} tokens kept ({vocab['kept'] / vocab['original']:.1%}), "
          f"--oov {vocab['oov']}" + (f" (auto: {vocab['oov_choice']['reason']})" if vocab["oov_choice"] else ""))
    if report.get("heldout_unk_rate") is not None:
        print(f"held-out    UNK rate {report['heldout_unk_rate']:.2%} of tokens "
              f"(full vocabulary: {report['heldout_unk_rate_full_vocab']:.2%})")
    print(f"predicted   {report['target']}: model {predicted['model']:,} bytes, bundle {predicted['total']:,} bytes")
    return 0

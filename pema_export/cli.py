"""Command line: argument parsing only. Our errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from pema_export.errors import PemaError
from pema_export.manifest import Manifest
from pema_export.oov import CHOICES as OOV_CHOICES
from pema_export.oov import DEFAULT as DEFAULT_OOV

EXIT_USAGE = 2


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pema-export",
        description="Prune a text model's vocabulary to an app's corpus, fine-tune with a partial embedding "
        "(when the corpus is labelled), and export a verified ONNX bundle.",
        epilog="Other commands: pema-export targets | size BUNDLE_DIR | check BUNDLE_DIR | scan (each with --help).",
    )
    parser.add_argument("--model", help="local model folder, Hugging Face hub id, or alias (distilbert, bert, minilm); "
                        "default: the embedded all-MiniLM-L6-v2")
    parser.add_argument("--corpus", action="append", required=True, metavar="FILE",
                        help="app texts: .txt (label<TAB>text or text), .tsv/.csv (text[,label]), .jsonl; repeatable")
    parser.add_argument("--out", required=True, metavar="PATH.onnx", help="model file to write; the bundle goes beside it")
    parser.add_argument("--target", default="cpu", help="target profile name or path to a .toml profile (default: cpu; "
                        "list: pema-export targets)")
    parser.add_argument("--quantize", metavar="none|int8|fp16", help="number format, overriding the target profile's; "
                        "int8/fp16 must agree with fp32 on >= 99%% of corpus texts (docs/targets.md)")
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
    parser.add_argument("--oov-dropout", type=float, metavar="P", help="in training, replace a share P of corpus words "
                        "by what an unseen word becomes (UNK, or the nearest kept token under --oov remap); default: "
                        "0.1 when --oov auto chooses unk for a labelled corpus, else 0")
    parser.add_argument("--task", choices=["fill-mask"], help="export the masked-LM head (logits over the kept "
                        "vocabulary) instead of a classifier/feature extractor")
    parser.add_argument("--eval", dest="eval_file", metavar="FILE", help="held-out texts the corpus does not contain: labelled for a classifier (accuracy of the "
                        "shipped model; default: a split of the corpus), plain for an encoder (its closeness to the "
                        "original full-vocabulary model)")
    parser.add_argument("--eval-split", type=float, default=0.1, help="held-out share of a labelled corpus (default 0.1)")
    # 5 epochs at 1e-4: on the samples, 3 at 5e-5 left held-out accuracy at 0.875 and margins so thin that
    # int8 flipped 1.2% of answers; 5 at 1e-4 gave 0.9375 and 99.8% int8 agreement (README, "Defaults").
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text in training and checks (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where to fine-tune: cpu (default), cuda or cuda:N")
    parser.add_argument("--save-full", metavar="DIR", help="also write a normal Hugging Face checkpoint with the full "
                        "vocabulary (trained rows merged into the pretrained matrix) and the original tokenizer to DIR")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder/hub")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def run_export(argv: Sequence[str]) -> int:
    from pema_export.pipeline import ExportOptions, run
    from pema_export.train import TrainOptions

    args = export_parser().parse_args(argv)
    _check_ranges(args)
    options = ExportOptions(
        corpus=args.corpus,
        out=args.out,
        model=args.model,
        target=args.target,
        keep_tokens=args.keep_tokens,
        min_count=args.min_count,
        eval_file=args.eval_file,
        eval_split=args.eval_split,
        max_length=args.max_length,
        train=TrainOptions(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
            device=args.device, progress=not args.quiet and sys.stderr.isatty(), oov_dropout=args.oov_dropout,
        ),
        trust_remote_code=args.trust_remote_code,
        oov=args.oov,
        max_vocab=args.max_vocab,
        max_bytes=_max_bytes(args.max_bytes),
        prior_words=args.prior_words,
        prior_lang=_languages(args.prior_lang),
        task=args.task,
        quantize=args.quantize,
        save_full=args.save_full,
    )
    log = (lambda message: None) if args.quiet else (lambda message: print(f"pema-export: {message}", file=sys.stderr))
    result = run(options, log=log)
    print(summary_lines(result.manifest, result.out_dir))
    return 0


def summary_lines(manifest: Manifest, out_dir) -> str:
    vocab, params, parity = manifest.vocab, manifest.params, manifest.parity
    model_file = manifest.model_file()
    lines = [
        f"bundle      {out_dir}/ ({', '.join(sorted(manifest.files))}, pema-manifest.json)",
        f"vocab       {vocab.kept:,} of {vocab.original:,} tokens kept ({vocab.kept / vocab.original:.1%})",
        f"params      {params.original:,} -> {params.exported:,} ({params.exported / params.original:.1%})",
        f"bytes       fp32 full vocabulary ~{4 * params.original:,} -> {model_file} {manifest.files[model_file]['bytes']:,}",
        f"parity      tokenization {parity.tokenization_texts_checked:,} texts, {parity.tokenization_mismatches} mismatches; "
        f"outputs on {parity.texts_checked:,} texts, max |diff| {parity.max_abs_diff:.2e} (<= {parity.atol:g})",
    ]
    if manifest.training:
        training = manifest.training
        lines.append(f"training    {training.epochs} epochs on {training.train_size:,} texts, "
                     f"held-out accuracy {training.eval_accuracy:.4f} on {training.eval_size:,}")
    heldout = manifest.heldout
    if heldout:
        unk = "n/a" if heldout.unk_rate is None else f"{heldout.unk_rate:.2%}"
        if heldout.cosine_to_full:
            figure = (f"cosine to the full-vocabulary model {heldout.cosine_to_full['mean']:.4f} mean, "
                      f"{heldout.cosine_to_full['min']:.4f} min; nearest-neighbour agreement {heldout.nearest_neighbour_agreement:.1%}")
        else:
            figure = f"accuracy {heldout.accuracy:.4f}"
        lines.append(f"held-out    {heldout.file} ({heldout.texts:,} texts, {heldout.model}): UNK {unk}, {figure}")
    return "\n".join(lines)


def _languages(prior_lang: str | None) -> list[str] | None:
    """--prior-lang "en, de" -> ["en", "de"]; None: detect them from the corpus."""
    return [lang.strip() for lang in prior_lang.split(",") if lang.strip()] if prior_lang else None


def _max_bytes(size: str | None) -> int | None:
    from pema_export.budget import parse_size

    return parse_size(size, "--max-bytes") if size is not None else None


def _check_ranges(args) -> None:
    from pema_export.errors import PemaError as Bad

    for name in ("epochs", "batch_size", "max_length", "min_count", "max_vocab", "prior_words"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise Bad(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.eval_split < 1:
        raise Bad("--eval-split must be between 0 and 1")
    if args.lr <= 0:
        raise Bad("--lr must be positive")
    if args.oov_dropout is not None and not 0 <= args.oov_dropout < 1:
        raise Bad("--oov-dropout must be at least 0 and below 1")


def run_targets(argv: Sequence[str]) -> int:
    from pema_export.profiles import builtin_targets, load_target

    argparse.ArgumentParser(prog="pema-export targets", description="List the built-in target profiles.").parse_args(argv)
    for name in sorted(builtin_targets()):
        target = load_target(name)
        print(f"{name:10s} {target.description}")
    return 0


def run_size(argv: Sequence[str]) -> int:
    from pema_export.size import bundle_report, render_table

    parser = argparse.ArgumentParser(prog="pema-export size", description="Where a bundle's bytes go: per file and per model part.")
    parser.add_argument("bundle", metavar="BUNDLE_DIR")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", metavar="OUT.png", help="also draw the breakdown (and the vocabulary coverage curve)")
    args = parser.parse_args(argv)
    report = bundle_report(args.bundle)
    if args.plot:
        from pema_export.size_plot import plot_report

        plot_report(report, args.plot)
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return 0


def run_check(argv: Sequence[str]) -> int:
    from pema_export.budget import check_bundle, load_baseline, load_budget, parse_tolerance
    from pema_export.size import bundle_report

    parser = argparse.ArgumentParser(prog="pema-export check", description="Fail when a bundle is over its size budget or grew since a baseline.")
    parser.add_argument("bundle", metavar="BUNDLE_DIR")
    parser.add_argument("--budget", metavar="FILE", help="pema-budget.toml (total, per-part and per-file limits)")
    parser.add_argument("--baseline", metavar="OLD_MANIFEST", help="an earlier pema-manifest.json to compare file sizes with")
    parser.add_argument("--tolerance", default="0%", help="allowed growth since the baseline (default 0%%)")
    args = parser.parse_args(argv)
    budget = load_budget(args.budget) if args.budget else None
    baseline = load_baseline(args.baseline) if args.baseline else None
    tolerance = parse_tolerance(args.tolerance)
    report = bundle_report(args.bundle)
    violations = check_bundle(report, budget, baseline, tolerance)
    for line in violations:
        print(f"over budget: {line}")
    if violations:
        return 1
    print(f"ok: {args.bundle} is {report.total_bytes:,} bytes ({report.total_deflate_bytes:,} deflated), within budget")
    return 0


def run_scan(argv: Sequence[str]) -> int:
    from pema_export.corpus import check_corpus_paths
    from pema_export.models import resolve_model
    from pema_export.profiles import load_target
    from pema_export.scan import bundle_predictor, scan_vocabulary, unk_rate
    from pema_export.tokenizers import check_supported, prune_tokenizer

    parser = argparse.ArgumentParser(prog="pema-export scan", description="Tokenize the corpus only (no training) "
                                     "and predict the kept vocabulary and the bundle's bytes for a target.")
    parser.add_argument("--model", help="as for the export (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", action="append", required=True, metavar="FILE")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--quantize", choices=("none", "int8", "fp16"), help="as for the export: overrides the target's")
    parser.add_argument("--heldout", metavar="FILE", help="texts the corpus does not contain: report their UNK rate")
    parser.add_argument("--keep-tokens", metavar="FILE")
    parser.add_argument("--min-count", type=int, default=1)
    parser.add_argument("--oov", choices=OOV_CHOICES, default=DEFAULT_OOV)
    parser.add_argument("--max-vocab", type=int)
    parser.add_argument("--max-bytes", metavar="SIZE", help="as for the export")
    parser.add_argument("--prior-words", type=int, metavar="N", help="as for the export")
    parser.add_argument("--prior-lang", metavar="LANG[,LANG]", help="as for the export")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    target = load_target(args.target, quantize=args.quantize)
    corpus_paths = check_corpus_paths(args.corpus)
    heldout_paths = check_corpus_paths([args.heldout]) if args.heldout else []
    source = resolve_model(args.model)
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    check_supported(tokenizer_json)
    scan = scan_vocabulary(source, tokenizer_json, corpus_paths, keep_tokens=args.keep_tokens, min_count=args.min_count,
                           oov=args.oov, max_vocab=args.max_vocab, prior_words=args.prior_words,
                           prior_lang=_languages(args.prior_lang), max_bytes=_max_bytes(args.max_bytes), target=target)
    prediction = bundle_predictor(source, tokenizer_json, scan.task, scan.summary.num_labels, target, scan.policy)(scan.kept)
    kept, original = scan.kept.size, scan.kept.original_size
    result = {
        "model": source.name,
        "target": target.name,
        "texts": scan.counts.texts,
        "tokens": scan.counts.tokens,
        "vocab": {"original": original, "kept": kept, "corpus_used": scan.counts.used_ids, "oov": scan.oov,
                  "oov_choice": scan.oov_choice},
        "predicted_bytes": {"model": prediction.model_bytes, "tokenizer": prediction.tokenizer_bytes,
                            "total": prediction.total_bytes},
    }
    if heldout_paths:
        # a bundle in the original numbering ships the original tokenizer: its unseen pieces never become UNK
        shipped = tokenizer_json if scan.policy.ships_original_numbering else prune_tokenizer(tokenizer_json, scan.kept.kept_ids)
        result["heldout_unk_rate"] = unk_rate(shipped, heldout_paths)
        result["heldout_unk_rate_full_vocab"] = unk_rate(tokenizer_json, heldout_paths)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"corpus      {scan.counts.texts:,} texts, {scan.counts.tokens:,} tokens, {scan.counts.used_ids:,} distinct ids")
    print(f"vocab       {kept:,} of {original:,} tokens kept ({kept / original:.1%}), --oov {scan.oov}"
          + (f" (auto: {scan.oov_choice['reason']})" if scan.oov_choice else ""))
    if result.get("heldout_unk_rate") is not None:
        print(f"held-out    UNK rate {result['heldout_unk_rate']:.2%} of tokens "
              f"(full vocabulary: {result['heldout_unk_rate_full_vocab']:.2%})")
    print(f"predicted   {target.name}: model {prediction.model_bytes:,} bytes, bundle {prediction.total_bytes:,} bytes")
    return 0


# Subcommands: the first word picks one; anything else is the export itself.
SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "targets": run_targets,
    "size": run_size,
    "check": run_check,
    "scan": run_scan,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = SUBCOMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else run_export(argv)
    except PemaError as exc:
        print(f"pema-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pema-export: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

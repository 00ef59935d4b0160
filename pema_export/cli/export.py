"""``pema-export --corpus ... --out ...``: the export itself, and the summary it prints."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pema_export.cli import options
from pema_export.manifest import Manifest
from pema_export.tasks import TASKS, requestable_tasks


def parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="pema-export",
        description="Prune a text model's vocabulary to an app's corpus, fine-tune with a partial embedding "
        "(when the corpus is labelled), and export a verified ONNX bundle.",
        epilog="Other commands: pema-export targets | size BUNDLE_DIR | check BUNDLE_DIR | scan (each with --help).",
    )
    options.add_model_and_corpus(parser)
    parser.add_argument("--out", required=True, metavar="PATH.onnx", help="model file to write; the bundle goes beside it")
    options.add_target(parser)
    options.add_vocabulary(parser)
    parser.add_argument("--oov-dropout", type=float, metavar="P", help="in training, replace a share P of corpus words "
                        "by what an unseen word becomes (UNK, or the nearest kept token under --oov remap; under --oov tail, "
                        "where no unseen word becomes UNK, UNK as a regulariser); default: 0.1 when --oov auto chooses "
                        "unk for a labelled corpus or the tail for tagged sentences, else 0")
    parser.add_argument("--task", choices=requestable_tasks(), help="export the masked-LM head (logits over the kept "
                        "vocabulary) instead of a classifier/feature extractor")
    parser.add_argument("--eval", dest="eval_file", metavar="FILE", help="held-out texts the corpus does not contain: labelled for a classifier (accuracy of the "
                        "shipped model; entity F1 for tagged sentences; default: a split of the corpus), plain for an "
                        "encoder (its closeness to the original full-vocabulary model)")
    parser.add_argument("--eval-split", type=float, default=0.1, help="held-out share of a labelled corpus (default 0.1)")
    # 5 epochs at 1e-4: on the samples, 3 at 5e-5 left held-out accuracy at 0.875 and margins so thin that
    # int8 flipped 1.2% of answers; 5 at 1e-4 gave 0.9375 and 99.8% int8 agreement (README, "Defaults"). A task may
    # set its own (tasks.Task.epochs, .lr: a token classifier trains 10 at 3e-4).
    parser.add_argument("--epochs", type=int, help="default: 5 (10 for tagged sentences)")
    parser.add_argument("--lr", type=float, help="peak learning rate; default: 1e-4 (3e-4 for tagged sentences)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per optimizer step, over all processes of an "
                        "accelerate launch (default 16)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text in training and checks (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the held-out split, training and the tail's k-means: "
                        "the same inputs and seed give the same bundle bytes (default 0)")
    parser.add_argument("--device", default="cpu", help="where to fine-tune: cpu (default), cuda, cuda:N, or auto (a "
                        "GPU when one is visible); export and verification run on the CPU")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="training precision: fp32 (default), or bf16/fp16 "
                        "autocast over fp32 weights (fp16 with loss scaling); the export stays fp32. Under accelerate "
                        "launch the default is its --mixed_precision")
    parser.add_argument("--save-full", metavar="DIR", help="also write a normal Hugging Face checkpoint with the full "
                        "vocabulary (trained rows merged into the pretrained matrix) and the original tokenizer to DIR")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder/hub")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def run(argv: Sequence[str]) -> int:
    from pema_export.pipeline import ExportOptions, run
    from pema_export.train import TrainOptions

    args = parser().parse_args(argv)
    options.check_ranges(args)
    export = ExportOptions(
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
            device=args.device, precision=args.precision, progress=not args.quiet and sys.stderr.isatty(), oov_dropout=args.oov_dropout,
        ),
        trust_remote_code=args.trust_remote_code,
        oov=args.oov,
        max_vocab=args.max_vocab,
        max_bytes=options.max_bytes(args.max_bytes),
        prior_words=args.prior_words,
        prior_lang=options.languages(args.prior_lang),
        tail_row_bytes=args.tail_row_bytes,
        task=args.task,
        quantize=args.quantize,
        tokenizer=args.tokenizer,
        save_full=args.save_full,
    )
    log = (lambda message: None) if args.quiet else (lambda message: print(f"pema-export: {message}", file=sys.stderr))
    result = run(export, log=log)
    if result is not None:  # None: a process of a launch other than process 0, which writes nothing
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
    metric = TASKS[manifest.model.task].metric
    if manifest.training:
        training = manifest.training
        figures = {name.removeprefix("eval_"): value for name, value in training.evaluation.items()}
        lines.append(f"training    {training.epochs} epochs on {training.train_size:,} texts, "
                     f"held-out {metric.describe(figures)} on {training.eval_size:,}")
        if metric.breakdown(figures):
            lines.append(f"            {metric.breakdown(figures)}")
    heldout = manifest.heldout
    if heldout:
        unk = "n/a" if heldout.unk_rate is None else f"{heldout.unk_rate:.2%}"
        if heldout.cosine_to_full:
            figure = (f"cosine to the full-vocabulary model {heldout.cosine_to_full['mean']:.4f} mean, "
                      f"{heldout.cosine_to_full['min']:.4f} min; nearest-neighbour agreement {heldout.nearest_neighbour_agreement:.1%}")
        else:
            figure = metric.describe({"accuracy": heldout.accuracy, **heldout.figures})
        lines.append(f"held-out    {heldout.file} ({heldout.texts:,} texts, {heldout.model}): UNK {unk}, {figure}")
    return "\n".join(lines)

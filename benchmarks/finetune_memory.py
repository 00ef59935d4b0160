"""Full-vocabulary vs PEMA fine-tuning: peak memory, wall time and held-out accuracy, each side in its own process.

    .venv/bin/python benchmarks/finetune_memory.py [--epochs 2] [--device cpu|cuda] [--precision fp32|bf16|fp16]
                                                   [--skip-xlmr] [--minilm DIR]

1. The embedded all-MiniLM-L6-v2 fine-tuned as a 6-way classifier on samples/app_texts.txt (483 texts), held-out
   accuracy on samples/heldout.txt (164 texts, written separately). Full side: what a user would otherwise run,
   ``AutoModelForSequenceClassification.from_pretrained`` with all 30,522 rows and original token ids. PEMA side:
   ``pema.load_partial_model`` (only the rows the train and held-out texts use, read by slice) and renumbered ids.
   Both use the same loop (``train.fine_tune``), seed, data order, batch size and the same seeded classifier head,
   so the two models differ only in float rounding.
2. An XLM-R-base-shaped encoder (250,002 x 768 embedding, 12 layers) with random weights, written once to a temp
   folder, trained a few steps on the same texts (MiniLM token ids spread over the 250k vocabulary by a fixed
   permutation): memory only, its accuracy means nothing.

The sides run one after the other, alternating for --repeats pairs (never in parallel: the XLM-R full side needs
several GB); the table shows each side's median and the median of the per-pair ratios. The last line printed
is one JSON object. Benchmarks print numbers; they are not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
XLMR_VOCAB = 250_002


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="training precision of both sides (autocast over fp32 weights)")
    parser.add_argument("--minilm", metavar="DIR", help="an all-MiniLM-L6-v2 folder (default: the embedded one)")
    parser.add_argument("--xlmr-steps", type=int, default=6, help="optimizer steps on the XLM-R-shaped model")
    parser.add_argument("--skip-xlmr", action="store_true")
    parser.add_argument("--repeats", type=int, default=3,
                        help="full/PEMA pairs, run alternately; the table shows medians and median per-pair ratios")
    parser.add_argument("--child", choices=["full", "pema"], help=argparse.SUPPRESS)
    parser.add_argument("--model", default="minilm", help=argparse.SUPPRESS)
    parser.add_argument("--make-xlmr", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_xlmr:
        make_xlmr(Path(args.make_xlmr))
    elif args.child:
        print(json.dumps(run_side(args)))
    else:
        compare(args)


def compare(args) -> None:
    common = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
              "--max-length", str(args.max_length), "--seed", str(args.seed), "--device", args.device,
              "--xlmr-steps", str(args.xlmr_steps), "--precision", args.precision] + (["--minilm", args.minilm] if args.minilm else [])
    results = {"device": args.device, "precision": args.precision, "batch_size": args.batch_size, "max_length": args.max_length, "epochs": args.epochs}
    results["repeats"] = args.repeats
    minilm = pairs("minilm", common, args.repeats)
    results.update(summary(minilm))
    print_table("all-MiniLM-L6-v2, 6-way classifier, " f"{minilm['full'][0]['train_texts']} train / "
                f"{minilm['full'][0]['eval_texts']} held-out texts, {args.epochs} epochs", minilm)
    if not args.skip_xlmr:
        with tempfile.TemporaryDirectory(prefix="pema-bench-xlmr-") as folder:
            subprocess.run([sys.executable, __file__, "--make-xlmr", folder], check=True)
            xlmr = pairs(folder, common, args.repeats)
        print_table(f"XLM-R-base-shaped, random weights, {args.xlmr_steps} steps (memory only)", xlmr)
        results.update({f"xlmr_{key}": value for key, value in summary(xlmr).items()})
    print(json.dumps(results))


def child(side: str, model: str, common: list[str]) -> dict:
    print(f"running {side} on {'MiniLM' if model == 'minilm' else 'XLM-R-shaped'} ...", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, __file__, "--child", side, "--model", model, *common],
                            stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def pairs(model: str, common: list[str], repeats: int) -> dict:
    """``repeats`` full/PEMA pairs, alternating so machine load falls on both sides alike: per side, every run."""
    runs = {"full": [], "pema": []}
    for _ in range(repeats):
        for side in ("full", "pema"):
            runs[side].append(child(side, model, common))
    for side, side_runs in runs.items():
        if len({run["accuracy"] for run in side_runs}) > 1:  # the loop is seeded: a difference is a bug, not noise
            raise SystemExit(f"{side}: held-out accuracy differs between repeats: {[run['accuracy'] for run in side_runs]}")
    return runs


def summary(runs: dict) -> dict:
    """Medians of each side's figures, and the median of the per-pair ratios (each pair ran back to back)."""
    from statistics import median

    def figure(side: str, key: str) -> float:
        return round(median(run[key] for run in runs[side]), 2)

    def ratio(key: str) -> float:
        return round(median(p[key] / f[key] for f, p in zip(runs["full"], runs["pema"])), 3)

    full, pema = runs["full"][0], runs["pema"][0]
    out = {
        "peak_rss_mb_full": figure("full", "peak_rss_mb"), "peak_rss_mb_pema": figure("pema", "peak_rss_mb"),
        "peak_rss_ratio": ratio("peak_rss_mb"),
        "seconds_full": figure("full", "seconds"), "seconds_pema": figure("pema", "seconds"),
        "seconds_ratio": ratio("seconds"),
        "seconds_ratio_per_pair": [round(p["seconds"] / f["seconds"], 3) for f, p in zip(runs["full"], runs["pema"])],
        "train_seconds_full": figure("full", "train_seconds"), "train_seconds_pema": figure("pema", "train_seconds"),
        "cpu_seconds_full": figure("full", "cpu_seconds"), "cpu_seconds_pema": figure("pema", "cpu_seconds"),
        "cpu_seconds_ratio": ratio("cpu_seconds"),
        "acc_full": full["accuracy"], "acc_pema": pema["accuracy"],
        "embedding_rows_full": full["embedding_rows"], "embedding_rows_pema": pema["embedding_rows"],
    }
    if full.get("peak_cuda_mb") is not None:
        out.update(peak_cuda_mb_full=figure("full", "peak_cuda_mb"), peak_cuda_mb_pema=figure("pema", "peak_cuda_mb"),
                   peak_cuda_ratio=ratio("peak_cuda_mb"))
    return out


def print_table(title: str, sides: dict) -> None:
    s = summary(sides)
    print(f"\n{title}")
    print(f"{'':22s}{'full vocabulary':>18s}{'PEMA':>14s}{'ratio':>9s}")
    print(f"{'embedding rows':22s}{s['embedding_rows_full']:>18,}{s['embedding_rows_pema']:>14,}")
    print(f"{'peak RSS (MB)':22s}{s['peak_rss_mb_full']:>18,.0f}{s['peak_rss_mb_pema']:>14,.0f}{s['peak_rss_ratio']:>9.3f}")
    if "peak_cuda_mb_full" in s:
        print(f"{'peak CUDA (MB)':22s}{s['peak_cuda_mb_full']:>18,.0f}{s['peak_cuda_mb_pema']:>14,.0f}{s['peak_cuda_ratio']:>9.3f}")
    print(f"{'wall time (s)':22s}{s['seconds_full']:>18.1f}{s['seconds_pema']:>14.1f}{s['seconds_ratio']:>9.3f}")
    print(f"{'  per pair':22s}{'':32s}{' '.join(f'{r:.3f}' for r in s['seconds_ratio_per_pair']):>9s}")
    print(f"{'  of which training':22s}{s['train_seconds_full']:>18.1f}{s['train_seconds_pema']:>14.1f}")
    print(f"{'CPU time (s)':22s}{s['cpu_seconds_full']:>18.1f}{s['cpu_seconds_pema']:>14.1f}{s['cpu_seconds_ratio']:>9.3f}")
    print(f"{'held-out accuracy':22s}{s['acc_full']:>18.4f}{s['acc_pema']:>14.4f}", flush=True)


def read_labelled(path: Path) -> tuple[list[str], list[str]]:
    pairs = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [text for _, text in pairs], [label for label, _ in pairs]


def run_side(args) -> dict:
    """One side, in this process: load, fine-tune, evaluate; peak RSS is this process's whole life."""
    import numpy as np
    import torch

    from pema_export.models import ModelSource, resolve_model
    from pema_export.pema import _initialise_fresh, load_partial_model, map_ids
    from pema_export.tasks import TASKS
    from pema_export.train import EncodedSet, TrainOptions, fine_tune
    from pema_export.vocab import KeptVocab, open_tokenizer

    minilm = resolve_model(args.minilm)
    tokenizer = open_tokenizer(minilm.tokenizer_json)
    tokenizer.enable_truncation(args.max_length)
    train_texts, train_labels = read_labelled(SAMPLES / "app_texts.txt")
    eval_texts, eval_labels = read_labelled(SAMPLES / "heldout.txt")
    labels = sorted(set(train_labels))
    train_ids = [enc.ids for enc in tokenizer.encode_batch(train_texts)]
    eval_ids = [enc.ids for enc in tokenizer.encode_batch(eval_texts)]
    if args.model == "minilm":
        source, original_size, specials = minilm, 30522, [0, 100, 101, 102, 103]
    else:
        source, original_size, specials = ModelSource("xlmr-shaped", Path(args.model), None), XLMR_VOCAB, [0, 1, 2, 3]
        to_xlmr = xlmr_id_map(len(tokenizer.get_vocab()))
        train_ids = [to_xlmr[ids].tolist() for ids in map(np.asarray, train_ids)][: args.xlmr_steps * args.batch_size]
        eval_ids = [to_xlmr[ids].tolist() for ids in map(np.asarray, eval_ids)][: 2 * args.batch_size]
        train_labels, eval_labels = train_labels[: len(train_ids)], eval_labels[: len(eval_ids)]
        args.epochs = 1
    # Rows for every text that is trained on or evaluated, as the PEMA reference counts them.
    used = np.unique(np.concatenate([np.asarray(ids) for ids in train_ids + eval_ids] + [np.asarray(specials)]))
    kept = KeptVocab(kept_ids=used, original_size=original_size, unk_id=100 if args.model == "minilm" else 3)
    label_kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})

    started, cpu_started = time.perf_counter(), cpu_seconds()
    if args.child == "full":
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(source.path, **label_kwargs)
        head = [name for name, _ in model.named_parameters() if not name.startswith(model.base_model_prefix + ".")]
        _initialise_fresh(model, head, args.seed)  # the very head load_partial_model gives the PEMA side
        pad_id = model.config.pad_token_id
    else:
        model = load_partial_model(source, kept, TASKS["text-classification"], labels=labels, seed=args.seed).model
        train_ids = [map_ids(kept, np.asarray(ids)).tolist() for ids in train_ids]
        eval_ids = [map_ids(kept, np.asarray(ids)).tolist() for ids in eval_ids]
        pad_id = model.config.pad_token_id
    label_index = {label: i for i, label in enumerate(labels)}
    options = TrainOptions(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                           device=args.device, precision=args.precision, progress=sys.stderr.isatty())
    report = fine_tune(model, EncodedSet(train_ids, [label_index[l] for l in train_labels]),
                       EncodedSet(eval_ids, [label_index[l] for l in eval_labels]), pad_id, options)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    return {
        "side": args.child,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux reports KiB
        "peak_cuda_mb": round(cuda, 1) if cuda is not None else None,
        "seconds": round(seconds, 2),
        "train_seconds": round(report.seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "accuracy": round(report.eval_accuracy, 4),
        "accuracy_per_epoch": report.eval_accuracy_per_epoch,
        "embedding_rows": model.get_input_embeddings().weight.shape[0],
        "train_texts": len(train_ids),
        "eval_texts": len(eval_ids),
    }


def cpu_seconds() -> float:
    # CPU time of this process: less disturbed than wall time when other work shares the cores.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def xlmr_id_map(minilm_vocab: int):
    """MiniLM ids -> XLM-R ids: specials to XLM-R's (<pad> 1, <unk> 3, <s> 0, </s> 2), the rest spread by a fixed
    permutation so the kept rows are scattered over the 250k matrix as a multilingual vocabulary's would be."""
    import numpy as np

    spread = np.random.default_rng(0).permutation(np.arange(4, XLMR_VOCAB))[:minilm_vocab]
    spread[[0, 100, 101, 102]] = [1, 3, 0, 2]
    return spread


def make_xlmr(folder: Path) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=XLMR_VOCAB, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    XLMRobertaModel(config).save_pretrained(folder)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

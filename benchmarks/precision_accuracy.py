"""Held-out accuracy of fine-tuning in bf16 / fp16 (autocast over fp32 weights) against fp32, per seed.

    .venv/bin/python benchmarks/precision_accuracy.py [--precisions fp32,bf16] [--seeds 0,1,2] [--device cpu|cuda]

The embedded all-MiniLM-L6-v2 with a partial embedding (the rows that samples/app_texts.txt and samples/heldout.txt
use, as benchmarks/finetune_memory.py keeps them) is fine-tuned on app_texts.txt (483 texts, 6 labels) with the
export's defaults (5 epochs, lr 1e-4, batch 16, --oov-dropout off) and scored on samples/heldout.txt (164 texts,
written separately) in fp32, as the exported model answers. Each run is its own process, one after the other.
The last line printed is one JSON object. Benchmarks print numbers; they are not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("PRECISION", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args.child[0], int(args.child[1]), args.device, args.epochs)))
        return
    runs = []
    for seed in args.seeds.split(","):
        for precision in args.precisions.split(","):
            print(f"{precision}, seed {seed} ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", precision, seed, "--device", args.device,
                                  "--epochs", str(args.epochs)], stdout=subprocess.PIPE, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  accuracy {runs[-1]['accuracy']:.4f}, {runs[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    print(f"\n{'seed':>6s}" + "".join(f"{p:>10s}" for p in args.precisions.split(",")))
    for seed in args.seeds.split(","):
        row = {r["precision"]: r["accuracy"] for r in runs if r["seed"] == int(seed)}
        print(f"{seed:>6s}" + "".join(f"{row[p]:>10.4f}" for p in args.precisions.split(",")))
    print(json.dumps({"device": args.device, "machine": machine(args.device), "epochs": args.epochs, "runs": runs}))


def run(precision: str, seed: int, device: str, epochs: int) -> dict:
    import numpy as np

    from pema_export.models import resolve_model
    from pema_export.pema import load_partial_model, map_ids
    from pema_export.tasks import TASKS
    from pema_export.train import EncodedSet, TrainOptions, fine_tune
    from pema_export.vocab import KeptVocab, open_tokenizer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from finetune_memory import read_labelled

    minilm = resolve_model(None)
    tokenizer = open_tokenizer(minilm.tokenizer_json)
    tokenizer.enable_truncation(128)
    train_texts, train_labels = read_labelled(SAMPLES / "app_texts.txt")
    eval_texts, eval_labels = read_labelled(SAMPLES / "heldout.txt")
    labels = sorted(set(train_labels))
    train_ids = [enc.ids for enc in tokenizer.encode_batch(train_texts)]
    eval_ids = [enc.ids for enc in tokenizer.encode_batch(eval_texts)]
    used = np.unique(np.concatenate([np.asarray(ids) for ids in train_ids + eval_ids] + [np.asarray([0, 100, 101, 102, 103])]))
    kept = KeptVocab(kept_ids=used, original_size=30522, unk_id=100)
    started = time.perf_counter()
    model = load_partial_model(minilm, kept, TASKS["text-classification"], labels=labels, seed=seed).model
    index = {label: i for i, label in enumerate(labels)}
    report = fine_tune(
        model,
        EncodedSet([map_ids(kept, np.asarray(ids)).tolist() for ids in train_ids], [index[l] for l in train_labels]),
        EncodedSet([map_ids(kept, np.asarray(ids)).tolist() for ids in eval_ids], [index[l] for l in eval_labels]),
        model.config.pad_token_id, TrainOptions(epochs=epochs, seed=seed, device=device, precision=precision),
    )
    return {"precision": precision, "seed": seed, "accuracy": round(report.eval_accuracy, 4),
            "accuracy_per_epoch": [round(a, 4) for a in report.eval_accuracy_per_epoch],
            "seconds": round(time.perf_counter() - started, 1), "train_seconds": round(report.seconds, 1)}


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    native = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16") if f" {f}" in flags]
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, native: {', '.join(native) or 'none'}"


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

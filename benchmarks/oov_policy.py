"""Measure the --oov policies on a labelled held-out set the corpus does not contain.

For each policy (and the full vocabulary as the ceiling) export a fine-tuned bundle from the corpus, then run
the exported ONNX model with the bundle's own pruned tokenizer on the held-out texts, as an app would.
Prints one table row per policy: kept rows, model bytes, held-out UNK rate, held-out accuracy.

    .venv/bin/python benchmarks/oov_policy.py                      # embedded all-MiniLM-L6-v2, the samples
    .venv/bin/python benchmarks/oov_policy.py --model PATH --corpus FILE --heldout FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pema_export.corpus import load_examples
from pema_export.models import resolve_model
from pema_export.pipeline import ExportOptions, run
from pema_export.train import TrainOptions, pad_batch
from pema_export.oov import POLICIES
from pema_export.vocab import open_tokenizer

REPO = Path(__file__).resolve().parent.parent
FULL = "full vocabulary"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", default=str(REPO / "samples" / "app_texts.txt"))
    parser.add_argument("--heldout", default=str(REPO / "samples" / "heldout.txt"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--target", default="cpu", help="target profile name or .toml path (default: cpu)")
    args = parser.parse_args()

    heldout = load_examples([Path(args.heldout)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="pema-oov-") as scratch:
        for policy in (FULL, *POLICIES):
            out = Path(scratch) / policy.replace(" ", "-") / "model.onnx"
            keep_file = _whole_vocabulary_file(args.model, Path(scratch)) if policy == FULL else None
            started = time.perf_counter()
            result = run(
                ExportOptions(
                    corpus=[args.corpus],
                    out=str(out),
                    model=args.model,
                    target=args.target,
                    # The ceiling keeps every token; its --oov value is irrelevant.
                    oov=next(iter(POLICIES)) if policy == FULL else policy,
                    keep_tokens=str(keep_file) if keep_file else None,
                    # The held-out file only reports accuracy per epoch; training uses the last epoch, so it
                    # does not select anything.
                    eval_file=args.heldout,
                    max_length=args.max_length,
                    train=TrainOptions(epochs=args.epochs, seed=args.seed),
                ),
                log=lambda message: print(f"  [{policy}] {message}", file=sys.stderr),
            )
            vocab = result.manifest.to_json()["vocab"]
            if policy == FULL and vocab["kept"] != vocab["original"]:
                raise SystemExit(f"the full-vocabulary run kept {vocab['kept']} of {vocab['original']} tokens")
            rows.append({"policy": policy, "kept_rows": vocab["kept"], "model_bytes": out.stat().st_size,
                         **_held_out(out, heldout, args.max_length), "seconds": round(time.perf_counter() - started)})
    print(_table(rows, Path(args.heldout).name, len(heldout)))
    print(json.dumps(rows, indent=2))
    return 0


def _whole_vocabulary_file(model: str | None, scratch: Path) -> Path:
    # --keep-tokens takes a vocabulary token per line: listing all of them keeps the whole vocabulary.
    tokenizer = open_tokenizer(resolve_model(model).tokenizer_json)
    path = scratch / "all-tokens.txt"
    tokens = sorted(tokenizer.get_vocab(with_added_tokens=True), key=tokenizer.token_to_id)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def _held_out(onnx_path: Path, examples, max_length: int) -> dict:
    """UNK rate and accuracy of the exported model, with the bundle's own tokenizer, on the held-out texts."""
    bundle = onnx_path.parent
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.enable_truncation(max_length)
    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    label2id = {label: int(i) for label, i in config["label2id"].items()}
    unk_token = json.loads((bundle / "tokenizer_config.json").read_text(encoding="utf-8")).get("unk_token", "[UNK]")
    unk_id = tokenizer.token_to_id(unk_token if isinstance(unk_token, str) else unk_token["content"])
    pad_id = config.get("pad_token_id") or 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    encodings = tokenizer.encode_batch([e.text for e in examples])
    # Count word pieces only: the special tokens around each text are never UNK.
    pieces = [i for enc in encodings for i, special in zip(enc.ids, enc.special_tokens_mask) if not special]
    texts_with_unk = sum(unk_id in enc.ids for enc in encodings)
    correct = 0
    for start in range(0, len(examples), 32):
        batch = encodings[start : start + 32]
        input_ids, attention_mask = pad_batch([enc.ids for enc in batch], pad_id)
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        predicted = session.run(["logits"], feeds)[0].argmax(-1)
        correct += sum(int(p) == label2id[e.label] for p, e in zip(predicted, examples[start : start + 32]))
    return {
        "heldout_unk_rate": round(sum(i == unk_id for i in pieces) / len(pieces), 4),
        "heldout_texts_with_unk": texts_with_unk,
        "heldout_accuracy": round(correct / len(examples), 4),
    }


def _table(rows: list[dict], heldout_name: str, heldout_size: int) -> str:
    lines = [
        f"held-out: {heldout_name} ({heldout_size} texts); accuracy of the exported ONNX model with its own tokenizer",
        "",
        "| policy | kept rows | model bytes (fp32) | held-out UNK rate (pieces) | held-out texts with UNK | held-out accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['policy']} | {row['kept_rows']:,} | {row['model_bytes']:,} | {row['heldout_unk_rate']:.2%} "
            f"| {row['heldout_texts_with_unk']} | {row['heldout_accuracy']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

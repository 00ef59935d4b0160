"""Entity F1 on a tagged corpus (default: the sample slot corpus; benchmarks/tagged_sets.py builds another):
full-vocabulary fine-tuning vs PEMA, each shipped fp32 and int8; bundle bytes against optimum's plain fp32 export.

Each row is a real export for the web target (it ships the fp32 graph and its int8 variant side by side), trained
on --train and held out on --heldout (--eval). "pema" is the CLI's default (--oov auto: the compressed tail, word
dropout 0.1); "full" is the same export with every vocabulary token listed in --keep-tokens (as oov_accuracy.py
does), for which auto takes unk with word dropout 0.1. The "-no-dropout" rows (ROW_OPTIONS) train without word
dropout, so that full and PEMA differ only in the rows the embedding holds. Figures per row:

- ``torch_f1``: the fine-tuned PyTorch model during training (the held-out file through the original tokenizer);
- ``fp32_f1`` / ``int8_f1``: the shipped onnx/model.onnx / onnx/model_quantized.onnx with the shipped tokenizer,
  one text at a time, as an app runs them (the manifest's heldout section is the fp32 one).

    .venv/bin/python benchmarks/token_classification.py --seeds 0 1 2 [--rows full pema full-no-dropout ...]

Rows are appended to --jsonl as they finish (a long run resumes; --table-only tabulates); the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pema_export.corpus import load_examples  # noqa: E402
from pema_export.models import resolve_model  # noqa: E402
from pema_export.oov.heldout import heldout_report  # noqa: E402
from pema_export.pipeline import ExportOptions, run  # noqa: E402
from pema_export.tasks import TASKS  # noqa: E402
from pema_export.train import TrainOptions  # noqa: E402
from pema_export.vocab import open_tokenizer, unk_token_id  # noqa: E402

TASK = TASKS["token-classification"]
ROWS = ("full", "full-no-dropout", "pema", "pema-no-dropout", "pema-tail-192-no-dropout")
# (export options, training options) per row; "full" and "pema" are the defaults. The full vocabulary leaves no rows
# for a tail, so --oov auto gives it unk with word dropout 0.1; the tail gets the same dropout for this task
# (Task.tail_word_dropout). The "-no-dropout" rows train without it, so "full-no-dropout" and "pema-no-dropout"
# differ only in the coded rows (docs/training.md: the same model on the corpus's rows); "pema-tail-192-no-dropout"
# codes them twice as finely as the web target's int8 default (what fp32 targets get).
ROW_OPTIONS = {
    "full": ({}, {}),
    "full-no-dropout": ({}, {"oov_dropout": 0.0}),
    "pema": ({}, {}),
    "pema-no-dropout": ({}, {"oov_dropout": 0.0}),
    "pema-tail-192-no-dropout": ({"tail_row_bytes": 192}, {"oov_dropout": 0.0}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default=str(REPO / "samples" / "slot_texts.jsonl"))
    parser.add_argument("--heldout", default=str(REPO / "samples" / "slot_heldout.jsonl"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "token_classification.jsonl"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=["full", "pema"], help="exports to run (default: full pema)")
    args = parser.parse_args()
    jsonl = Path(args.jsonl)
    if not args.table_only:
        for seed in args.seeds:
            for name in args.rows:
                if any(r["row"] == name and r["seed"] == seed for r in _rows(jsonl)):
                    continue
                row = _export(name, args, seed, plain=not any(r.get("plain_model_bytes") for r in _rows(jsonl)))
                with jsonl.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr)
    print(table(_rows(jsonl)))
    return 0


def _export(name: str, args, seed: int, plain: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="pema-tokencls-") as scratch:
        scratch = Path(scratch)
        out = scratch / "bundle" / "model.onnx"
        keep = _whole_vocabulary_file(scratch) if name.startswith("full") else None
        full_checkpoint = scratch / "full" if plain and name.startswith("pema") else None
        started = time.perf_counter()
        manifest = run(ExportOptions(
            corpus=[args.train], out=str(out), target="web", eval_file=args.heldout, keep_tokens=str(keep) if keep else None,
            save_full=str(full_checkpoint) if full_checkpoint else None, train=TrainOptions(seed=seed, **ROW_OPTIONS[name][1]),
            **ROW_OPTIONS[name][0],
        ), log=lambda message: print(f"  [{name} seed {seed}] {message}", file=sys.stderr)).manifest.to_json()
        seconds = time.perf_counter() - started
        bundle = out.parent
        row = {
            "row": name, "seed": seed, "kept_rows": manifest["vocab"]["kept"], "oov": manifest["vocab"]["oov"],
            "torch_f1": manifest["training"]["eval_entity_f1"], "fp32_f1": manifest["heldout"]["entity_f1"],
            "int8_f1": _shipped_f1(bundle, "onnx/model_quantized.onnx", args.heldout, manifest),
            "heldout_unk_rate": manifest["heldout"]["unk_rate"],
            "int8_top1_agreement": next(s["check"]["top1_agreement"] for s in manifest["stages"] if s["stage"] == "quantize int8"),
            "fp32_model_bytes": manifest["files"]["onnx/model.onnx"]["bytes"],
            "int8_model_bytes": manifest["files"]["onnx/model_quantized.onnx"]["bytes"],
            "per_label_fp32_f1": {label: entry["f1"] for label, entry in manifest["heldout"]["entity_per_label"].items()},
            "seconds": round(seconds),
        }
        if full_checkpoint:
            row["plain_model_bytes"] = _plain_export_bytes(full_checkpoint, scratch / "plain")
        return row


def _shipped_f1(bundle: Path, model: str, heldout: str, manifest: dict) -> float:
    """The held-out entity F1 of one shipped model file with the shipped tokenizer (as pipeline.held_out runs the
    fp32 one)."""
    examples = load_examples([heldout])
    labels = manifest["training"]["labels"]
    label_ids = {label: i for i, label in enumerate(labels)}
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.enable_truncation(manifest["training"]["max_length"])
    texts = [e.text for e in examples]
    targets = [TASK.targets(e, enc, label_ids) for e, enc in zip(examples, tokenizer.encode_batch(texts))]
    shipped_unk = unk_token_id(json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8")))
    report = heldout_report(bundle / model, tokenizer, texts, targets, TASK, label_names=labels, unk_id=shipped_unk)
    return round(report.score.value, 6)


def _plain_export_bytes(checkpoint: Path, folder: Path) -> int:
    """optimum's own fp32 export of the full-vocabulary checkpoint (the trained rows merged back: --save-full)."""
    from optimum.exporters.onnx import main_export

    main_export(str(checkpoint), output=str(folder), task="token-classification", library_name="transformers",
                do_validation=False)
    return (folder / "model.onnx").stat().st_size


def _whole_vocabulary_file(scratch: Path) -> Path:
    # --keep-tokens takes a vocabulary token per line: listing all of them keeps the whole vocabulary.
    tokenizer = open_tokenizer(resolve_model(None).tokenizer_json)
    path = scratch / "all-tokens.txt"
    path.write_text("\n".join(sorted(tokenizer.get_vocab(with_added_tokens=True), key=tokenizer.token_to_id)) + "\n",
                    encoding="utf-8")
    return path


def _rows(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()] if jsonl.is_file() else []


def table(rows: list[dict]) -> str:
    """Markdown: entity F1 (medians over seeds) and model bytes against optimum's plain fp32 export."""
    plain = next((r["plain_model_bytes"] for r in rows if r.get("plain_model_bytes")), None)
    lines = ["| export | kept rows | seeds | torch F1 | shipped fp32 F1 | shipped int8 F1 | fp32 model bytes (× plain) | int8 model bytes (× plain) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ROWS:
        mine = [r for r in rows if r["row"] == name]
        if not mine:
            continue
        med = {key: statistics.median(r[key] for r in mine) for key in ("torch_f1", "fp32_f1", "int8_f1", "fp32_model_bytes", "int8_model_bytes", "kept_rows")}
        ratio = (lambda b: f"{b:,.0f} ({b / plain:.3f}×)") if plain else (lambda b: f"{b:,.0f}")
        lines.append(f"| {name} | {med['kept_rows']:,.0f} | {', '.join(str(r['seed']) for r in mine)} | {med['torch_f1']:.4f} | "
                     f"{med['fp32_f1']:.4f} | {med['int8_f1']:.4f} | {ratio(med['fp32_model_bytes'])} | {ratio(med['int8_model_bytes'])} |")
    if plain:
        lines.append(f"\noptimum plain fp32 export of the same model (full vocabulary): {plain:,} bytes")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

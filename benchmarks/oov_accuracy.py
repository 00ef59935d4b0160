"""Accuracy on text the corpus never had: every --oov method and combination against the full vocabulary.

Each row is a real export (the pipeline, fine-tuned on the train file) for one target; the figures are the
manifest's own: bundle bytes (every shipped file), and the held-out UNK rate and accuracy of the *shipped* model
with the *shipped* tokenizer, one text at a time, as an app runs it (``--eval FILE``). The full-vocabulary model is
the ceiling, naive pruning (``--oov unk``) the floor. Rows repeat for each seed; the table shows medians.

    .venv/bin/python benchmarks/oov_accuracy.py                                   # samples, cpu (fused int8), seed 0
    .venv/bin/python benchmarks/oov_accuracy.py --seeds 0 1 2 --rows full unk remap+prior20k+dropout
    .venv/bin/python benchmarks/oov_accuracy.py --train FILE --heldout FILE --model PATH --target web

Raw rows are appended to --jsonl as they finish, so a long run can be resumed or tabulated with --table-only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pema_export.errors import PemaError
from pema_export.models import resolve_model
from pema_export.pipeline import ExportOptions, run
from pema_export.train import TrainOptions
from pema_export.vocab import open_tokenizer

REPO = Path(__file__).resolve().parent.parent
BUDGET_SHARE = 0.70  # the goal: within 1 point of the full vocabulary at <= 0.70x its bundle bytes

# name -> export options (besides corpus/out/model/target/eval/train); "budget" rows get --max-bytes from the full row.
ROWS: dict[str, dict] = {
    "full": {"oov": "fallback", "full": True},
    "unk": {"oov": "unk"},
    "fallback": {"oov": "fallback"},
    "unk+prior5k": {"oov": "unk", "prior_words": 5000},
    "unk+prior20k": {"oov": "unk", "prior_words": 20000},
    "unk+dropout": {"oov": "unk", "oov_dropout": 0.1},
    "remap": {"oov": "remap"},
    "remap+dropout": {"oov": "remap", "oov_dropout": 0.1},
    "remap+prior5k": {"oov": "remap", "prior_words": 5000},
    "remap+prior20k": {"oov": "remap", "prior_words": 20000},
    "remap+prior20k+dropout": {"oov": "remap", "prior_words": 20000, "oov_dropout": 0.1},
    "remap+prior20k+budget0.70": {"oov": "remap", "prior_words": 20000, "budget": BUDGET_SHARE},
    "unk+prior20k+dropout+budget0.70": {"oov": "unk", "prior_words": 20000, "oov_dropout": 0.1, "budget": BUDGET_SHARE},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--train", default=str(REPO / "samples" / "app_texts.txt"))
    parser.add_argument("--heldout", default=str(REPO / "samples" / "heldout.txt"))
    parser.add_argument("--target", default="cpu", help="one target for every row, so bytes compare like with like")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "oov_accuracy.jsonl"))
    parser.add_argument("--table-only", action="store_true", help="print the table of the rows already in --jsonl")
    args = parser.parse_args()

    jsonl = Path(args.jsonl)
    if not args.table_only:
        for seed in args.seeds:
            full_bytes = _full_bytes(jsonl, args.target, seed)
            for name in args.rows:
                if _done(jsonl, name, args.target, seed):
                    continue
                if ROWS[name].get("budget") and full_bytes is None:
                    raise SystemExit(f"row {name} needs the 'full' row of seed {seed} first (its bytes set the budget)")
                row = _export(name, ROWS[name], args, seed, full_bytes)
                with jsonl.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                if name == "full":
                    full_bytes = row["bundle_bytes"]
                print(json.dumps(row), file=sys.stderr)
    print(table(_rows(jsonl, args.target), Path(args.heldout).name))
    return 0


def _export(name: str, spec: dict, args, seed: int, full_bytes: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="pema-oov-") as scratch:
        out = Path(scratch) / "bundle" / "model.onnx"
        keep_file = _whole_vocabulary_file(args.model, Path(scratch)) if spec.get("full") else None
        started = time.perf_counter()
        options = ExportOptions(
            corpus=[args.train], out=str(out), model=args.model, target=args.target, eval_file=args.heldout,
            oov=spec["oov"], keep_tokens=str(keep_file) if keep_file else None,
            prior_words=spec.get("prior_words"), max_bytes=int(full_bytes * spec["budget"]) if spec.get("budget") else None,
            train=TrainOptions(epochs=args.epochs, seed=seed, oov_dropout=spec.get("oov_dropout", 0.0)),
        )
        try:
            manifest = run(options, log=lambda message: print(f"  [{name} seed {seed}] {message}", file=sys.stderr)).manifest.to_json()
        except PemaError as exc:  # e.g. an int8 stage missing its bound: a finding, reported as such
            return {"row": name, "target": args.target, "seed": seed, "error": str(exc)}
        bundle_bytes = sum(entry["bytes"] for entry in manifest["files"].values())
        bundle_bytes += (out.parent / "pema-manifest.json").stat().st_size
        quantize = next((s["check"] for s in manifest["stages"] if s["stage"].startswith("quantize")), {})
        return {
            "row": name, "target": args.target, "seed": seed, "kept_rows": manifest["vocab"]["kept"],
            "bundle_bytes": bundle_bytes, "heldout_accuracy": manifest["heldout"]["accuracy"],
            "heldout_unk_rate": manifest["heldout"]["unk_rate"], "heldout_remapped_rate": manifest["heldout"]["remapped_rate"],
            "fp32_heldout_accuracy": manifest["training"]["eval_accuracy"], "int8_top1_agreement": quantize.get("top1_agreement"),
            "tokenization_mismatches": manifest["parity"]["tokenization_mismatches"],
            "parity_max_abs_diff": manifest["parity"]["max_abs_diff"], "seconds": round(time.perf_counter() - started),
        }


def _whole_vocabulary_file(model: str | None, scratch: Path) -> Path:
    # --keep-tokens takes a vocabulary token per line: listing all of them keeps the whole vocabulary.
    tokenizer = open_tokenizer(resolve_model(model).tokenizer_json)
    path = scratch / "all-tokens.txt"
    path.write_text("\n".join(sorted(tokenizer.get_vocab(with_added_tokens=True), key=tokenizer.token_to_id)) + "\n", encoding="utf-8")
    return path


def _rows(jsonl: Path, target: str) -> list[dict]:
    if not jsonl.is_file():
        return []
    return [row for row in map(json.loads, jsonl.read_text(encoding="utf-8").splitlines()) if row["target"] == target]


def _done(jsonl: Path, name: str, target: str, seed: int) -> bool:
    return any(row["row"] == name and row["seed"] == seed for row in _rows(jsonl, target))


def _full_bytes(jsonl: Path, target: str, seed: int) -> int | None:
    return next((row["bundle_bytes"] for row in _rows(jsonl, target) if row["row"] == "full" and row["seed"] == seed and "error" not in row), None)


def table(rows: list[dict], heldout_name: str) -> str:
    """Markdown: one line per method, medians over seeds; bytes relative to the full vocabulary's."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["row"], []).append(row)
    full = [r for r in by_name.get("full", []) if "error" not in r]
    full_bytes = statistics.median(r["bundle_bytes"] for r in full) if full else None
    full_accuracy = statistics.median(r["heldout_accuracy"] for r in full) if full else None
    lines = [
        f"held-out: {heldout_name}; target {rows[0]['target'] if rows else '?'}; accuracy of the shipped model, medians over seeds",
        "",
        "| method | seeds | kept rows | bundle bytes | × full | held-out UNK rate | remapped pieces | held-out accuracy (per seed) | Δ vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name in [n for n in ROWS if n in by_name]:
        ok = [r for r in by_name[name] if "error" not in r]
        if not ok:
            lines.append(f"| {name} | {len(by_name[name])} | failed: {by_name[name][0]['error'][:120]} |||||||")
            continue
        size = statistics.median(r["bundle_bytes"] for r in ok)
        accuracy = statistics.median(r["heldout_accuracy"] for r in ok)
        unk = statistics.median(r["heldout_unk_rate"] or 0.0 for r in ok)
        remapped = statistics.median(r["heldout_remapped_rate"] for r in ok)
        seeds = ", ".join(f"{r['heldout_accuracy']:.4f}" for r in sorted(ok, key=lambda r: r["seed"]))
        ratio = f"{size / full_bytes:.2f}" if full_bytes else "?"
        delta = f"{(accuracy - full_accuracy) * 100:+.1f} pt" if full_accuracy is not None else "?"
        failed = len(by_name[name]) - len(ok)
        lines.append(
            f"| {name} | {len(ok)}{f' (+{failed} failed)' if failed else ''} | {statistics.median(r['kept_rows'] for r in ok):,.0f} "
            f"| {size:,.0f} | {ratio} | {unk:.2%} | {remapped:.2%} | {accuracy:.4f} ({seeds}) | {delta} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

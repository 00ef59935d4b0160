"""Accuracy on text the corpus never had: every --oov method on several labelled evaluation sets, several seeds.

For each evaluation set (benchmarks/evalsets.py builds them; samples/app_texts.txt + samples/heldout.txt is one
more) and each seed, all-MiniLM-L6-v2 is fine-tuned on the set's train file, and every method is a real export
whose shipped model is run with its shipped tokenizer on the set's test file, one text at a time, as an app runs it:

- ``unk``: fine-tuned with PEMA (only the corpus's rows exist) with ``--save-full``; the naive-pruning floor.
- ``full``, ``fallback``, ``remap``, ``tail-N``: exports of that same fine-tuned model (the ``--save-full``
  checkpoint, corpus texts as the corpus), so they differ only in what ships for the rows the corpus never used.
  This is the same model each would train: with AdamW and no weight decay on embeddings, rows the corpus never uses
  get no gradient (the repository's equivalence test, tests/test_pema.py), and none of these methods changes the
  training data. ``full`` keeps every row exact: the ceiling.
- ``unk+dropout``: ``--oov unk --oov-dropout 0.1``, which trains differently, so it is fine-tuned on its own.
- ``tail-192+dropout``: ``--oov tail --tail-row-bytes 192 --oov-dropout 0.1``: word dropout as a regulariser under the
  tail (what token classification gets by default), also fine-tuned on its own.
- ``default``: plain ``pema-export`` (``--oov auto``) fine-tuned on its own, to show the default as users get it.

Bytes: every row's bundle (all shipped files) against optimum's plain export of the same full-vocabulary model,
fp32 and int8 (``ORTQuantizer``, dynamic, per channel), model file plus the tokenizer files it writes. Accuracy
rows are ``--quantize none`` (fp32, fused, cpu target); the int8 cpu bundle of ``default`` is measured too.

    .venv/bin/python benchmarks/oov_accuracy.py --seeds 0 1 2             # every set; appends to --jsonl
    .venv/bin/python benchmarks/oov_accuracy.py --table-only              # tables of the rows recorded so far

Rows are appended to --jsonl as they finish, so a long run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

EPOCHS = 3
DROPOUT = 0.1
# method -> extra export options, applied to the --save-full checkpoint of the seed's PEMA run
DERIVED = {
    "full": None,  # --keep-tokens: the whole vocabulary
    "fallback": ["--oov", "fallback"],
    "remap": ["--oov", "remap"],
    "tail-24": ["--oov", "tail", "--tail-row-bytes", "24"],
    "tail-48": ["--oov", "tail", "--tail-row-bytes", "48"],
    "tail-96": ["--oov", "tail", "--tail-row-bytes", "96"],
    "tail-192": ["--oov", "tail", "--tail-row-bytes", "192"],
    # also exact: the rows of the language's 2,000 most frequent words (pretrained, as the full model has them)
    "tail-24+prior-2000": ["--oov", "tail", "--tail-row-bytes", "24", "--prior-words", "2000"],
}
METHODS = ["full", "unk", "unk+dropout", "fallback", "remap", "tail-24", "tail-48", "tail-96", "tail-192", "tail-24+prior-2000",
           "tail-192+dropout", "default"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", help="evaluation sets (default: samples and every set evalsets.py builds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--evalsets-dir", default=str(REPO / "build" / "evalsets"))
    parser.add_argument("--jsonl", default=str(REPO / "benchmarks" / "oov_accuracy_sets.jsonl"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    jsonl = Path(args.jsonl)
    sets = evaluation_sets(Path(args.evalsets_dir), args.sets, build=not args.table_only)
    if not args.table_only:
        # seed by seed across the sets, so a partial run already covers every set
        for seed in args.seeds:
            for name, (train, test) in sets.items():
                run_seed(jsonl, name, train, test, seed, args.methods)
    print(tables(recorded(jsonl), list(sets)))
    return 0


def evaluation_sets(folder: Path, only: list[str] | None, build: bool) -> dict[str, tuple[Path, Path]]:
    sets = {"samples": (REPO / "samples" / "app_texts.txt", REPO / "samples" / "heldout.txt")}
    if build:
        from evalsets import build_all

        sets.update(build_all(folder))
    else:
        sets.update({p.name: (p / "train.txt", p / "test.txt") for p in sorted(folder.glob("*")) if (p / "test.txt").is_file()})
    return {name: paths for name, paths in sets.items() if not only or name in only}


def run_seed(jsonl: Path, set_name: str, train: Path, test: Path, seed: int, methods: list[str]) -> None:
    done = {row["method"] for row in recorded(jsonl) if row["set"] == set_name and row["seed"] == seed}
    todo = [m for m in methods if m not in done]
    if not todo:
        return
    # the seed's fine-tuned model is kept, so methods added later are exported from the same model
    checkpoint = REPO / "build" / "oov_accuracy" / set_name / f"seed{seed}" / "full"
    with tempfile.TemporaryDirectory(prefix="pema-oov-") as scratch:
        scratch = Path(scratch)
        texts = scratch / "texts.txt"  # the corpus's texts without labels: a derived export does not train
        texts.write_text("".join(line.split("\t", 1)[1] + "\n" for line in read_lines(train)), encoding="utf-8")
        common = ["--epochs", str(EPOCHS), "--seed", str(seed), "--quantize", "none"]
        if "unk" in todo or (not checkpoint.is_dir() and any(m in DERIVED for m in todo)):
            shutil.rmtree(checkpoint, ignore_errors=True)
            row = export(scratch / "unk", ["--corpus", str(train), "--oov", "unk", "--oov-dropout", "0", *common,
                                           "--save-full", str(checkpoint)], test)
            record(jsonl, set_name, seed, "unk", row, done)
        if any(m in DERIVED for m in todo):
            # optimum's bytes depend on the architecture and the labels, not the seed: measured once per set
            plain = next((row["optimum"] for row in recorded(jsonl) if row["set"] == set_name and "optimum" in row), None)
            plain = plain or optimum_bytes(checkpoint, scratch / "optimum")
            for method in (m for m in todo if m in DERIVED):
                options = DERIVED[method] or ["--oov", "unk", "--keep-tokens", str(whole_vocabulary(checkpoint, scratch))]
                row = export(scratch / method, ["--model", str(checkpoint), "--corpus", str(texts), "--quantize", "none",
                                                "--seed", str(seed), *options], test)
                record(jsonl, set_name, seed, method, {**row, "optimum": plain}, done)
        if "unk+dropout" in todo:
            row = export(scratch / "dropout", ["--corpus", str(train), "--oov", "unk", "--oov-dropout", str(DROPOUT), *common], test)
            record(jsonl, set_name, seed, "unk+dropout", row, done)
        if "tail-192+dropout" in todo:  # word dropout as a regulariser under the tail (trains differently: its own run)
            row = export(scratch / "tail-dropout", ["--corpus", str(train), "--oov", "tail", "--tail-row-bytes", "192",
                                                    "--oov-dropout", str(DROPOUT), *common], test)
            record(jsonl, set_name, seed, "tail-192+dropout", row, done)
        if "default" in todo:
            row = export(scratch / "default", ["--corpus", str(train), "--epochs", str(EPOCHS), "--seed", str(seed),
                                               "--quantize", "none"], test)
            int8 = export(scratch / "default-int8", ["--corpus", str(train), "--epochs", str(EPOCHS), "--seed", str(seed)], test)
            record(jsonl, set_name, seed, "default", {**row, "int8": int8}, done)


def export(folder: Path, options: list[str], test: Path) -> dict:
    """One real export with the CLI, then its shipped model and tokenizer on the test texts."""
    out = folder / "model.onnx"
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "pema-export"), "--out", str(out), "--quiet", *options],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1], "seconds": round(seconds)}
    manifest = json.loads((folder / "pema-manifest.json").read_text(encoding="utf-8"))
    accuracy, unk_rate = shipped_accuracy(folder, test)
    vocab = manifest["vocab"]
    return {
        "kept_rows": vocab["kept"], "oov": vocab["oov"], "tail": vocab.get("tail"),
        "bundle_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and f.name != "pema-timings.json"),
        "model_bytes": out.stat().st_size, "accuracy": accuracy, "unk_rate": unk_rate,
        "fp32_eval_accuracy": (manifest.get("training") or {}).get("eval_accuracy"),
        "parity_max_abs_diff": manifest["parity"]["max_abs_diff"], "seconds": round(seconds),
    }


def shipped_accuracy(bundle: Path, test: Path, max_length: int = 128) -> tuple[float, float | None]:
    """Accuracy of the bundle's model.onnx with its tokenizer.json on ``label<TAB>text`` lines, one text at a time,
    and the share of word pieces it reads as UNK."""
    predicted, labels, unk_rate = shipped_predictions(bundle, test, max_length)
    return sum(p == label for p, label in zip(predicted, labels)) / len(labels), unk_rate


def shipped_predictions(bundle: Path, test: Path, max_length: int = 128) -> tuple[list[str], list[str], float | None]:
    """The label the bundle predicts for each test line, each line's own label, and the share of UNK pieces."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    label_of = {int(k): v for k, v in config["id2label"].items()}
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    unk = tokenizer.token_to_id(str(tokenizer.model.unk_token)) if hasattr(tokenizer.model, "unk_token") else None
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    predicted, labels, pieces, unknown = [], [], 0, 0
    for line in read_lines(test):
        label, text = line.split("\t", 1)
        encoding = tokenizer.encode(text)
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        logits = session.run(["logits"], {k: v for k, v in feeds.items() if k in inputs})[0][0]
        predicted.append(label_of[int(logits.argmax())])
        labels.append(label)
        words = [i for i, special in zip(encoding.ids, encoding.special_tokens_mask) if not special]
        pieces += len(words)
        unknown += sum(i == unk for i in words) if unk is not None else 0
    return predicted, labels, (unknown / pieces if unk is not None and pieces else None)


def optimum_bytes(checkpoint: Path, folder: Path) -> dict:
    """optimum's plain export of the full-vocabulary model: fp32, and its own dynamic int8 (per channel)."""
    code = f"""
import sys
from pathlib import Path
from optimum.exporters.onnx import main_export
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
out = Path(sys.argv[2])
main_export(sys.argv[1], output=out / "fp32", task="text-classification", library_name="transformers", do_validation=False)
quantizer = ORTQuantizer.from_pretrained(out / "fp32")
quantizer.quantize(save_dir=out / "int8", quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True))
"""
    subprocess.run([sys.executable, "-c", code, str(checkpoint), str(folder)], check=True, capture_output=True)
    sizes = {}
    for precision in ("fp32", "int8"):
        files = [f for f in (folder / precision).rglob("*") if f.is_file()]
        model = next(f for f in files if f.suffix == ".onnx")
        sizes[precision] = {"model_bytes": model.stat().st_size, "folder_bytes": sum(f.stat().st_size for f in files)}
    return sizes


def whole_vocabulary(checkpoint: Path, scratch: Path) -> Path:
    # --keep-tokens takes a vocabulary token per line: listing all of them keeps every row
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    path = scratch / "all-tokens.txt"
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    path.write_text("".join(token + "\n" for token in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return path


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def record(jsonl: Path, set_name: str, seed: int, method: str, row: dict, done: set[str]) -> None:
    if method in done:
        return
    entry = {"set": set_name, "seed": seed, "method": method, **row}
    with jsonl.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    done.add(method)
    print(json.dumps(entry), file=sys.stderr, flush=True)


def recorded(jsonl: Path) -> list[dict]:
    if not jsonl.is_file():
        return []
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if "set" in row]  # rows of the earlier single-file benchmark have no set


def tables(rows: list[dict], set_names: list[str]) -> str:
    """Per set: one line per method, medians over seeds; bytes against optimum's plain exports."""
    out = []
    for set_name in set_names:
        in_set = [r for r in rows if r["set"] == set_name]
        if not in_set:
            continue
        full = [r["accuracy"] for r in in_set if r["method"] == "full" and "error" not in r]
        plain = next((r["optimum"] for r in in_set if "optimum" in r), None)
        ceiling = statistics.median(full) if full else None
        out += [f"### {set_name}", "",
                "| method | seeds | kept rows | bundle bytes | × optimum fp32 | accuracy: median (per seed) | Δ vs full |",
                "|---|---:|---:|---:|---:|---|---:|"]
        for method in METHODS:
            runs = sorted((r for r in in_set if r["method"] == method), key=lambda r: r["seed"])
            ok = [r for r in runs if "error" not in r]
            if not runs:
                continue
            if not ok:
                out.append(f"| {method} | {len(runs)} | failed: {runs[0]['error'][:100]} | | | | |")
                continue
            accuracy = statistics.median(r["accuracy"] for r in ok)
            size = statistics.median(r["bundle_bytes"] for r in ok)
            ratio = f"{size / plain['fp32']['folder_bytes']:.3f}" if plain else "?"
            delta = f"{(accuracy - ceiling) * 100:+.1f} pt" if ceiling is not None else "?"
            per_seed = ", ".join(f"{r['accuracy']:.4f}" for r in ok)
            out.append(f"| {method} | {len(ok)} | {statistics.median(r['kept_rows'] for r in ok):,.0f} | {size:,.0f} | "
                       f"{ratio} | {accuracy:.4f} ({per_seed}) | {delta} |")
        int8 = [r["int8"] for r in in_set if r["method"] == "default" and "int8" in r and "error" not in r["int8"]]
        if int8 and plain:
            size = statistics.median(r["bundle_bytes"] for r in int8)
            out.append(f"\ndefault, cpu int8 bundle: {size:,.0f} bytes = {size / plain['int8']['folder_bytes']:.3f} × optimum int8 "
                       f"({plain['int8']['folder_bytes']:,}); accuracy {statistics.median(r['accuracy'] for r in int8):.4f}")
        out.append("")
    return "\n".join(out + [summary(rows, set_names)])


def summary(rows: list[dict], set_names: list[str]) -> str:
    """One line per method across the sets: each set's median accuracy minus the full vocabulary's median on the
    seeds both have, and the bundle bytes against the full vocabulary's."""
    present = [name for name in set_names if any(r["set"] == name and r["method"] == "full" for r in rows)]
    out = ["### Across the sets: Δ accuracy vs the full vocabulary (median over seeds; seeds run)", "",
           "| method | " + " | ".join(present) + " | median Δ | bytes × full (median) |",
           "|---|" + "---:|" * (len(present) + 2)]
    for method in METHODS:
        deltas, ratios, cells = [], [], []
        for name in present:
            mine = {r["seed"]: r for r in rows if r["set"] == name and r["method"] == method and "error" not in r}
            full = {r["seed"]: r for r in rows if r["set"] == name and r["method"] == "full" and "error" not in r}
            seeds = sorted(set(mine) & set(full))
            if not seeds:
                cells.append("")
                continue
            delta = (statistics.median(mine[s]["accuracy"] for s in seeds) - statistics.median(full[s]["accuracy"] for s in seeds)) * 100
            deltas.append(delta)
            ratios.append(statistics.median(mine[s]["bundle_bytes"] / full[s]["bundle_bytes"] for s in seeds))
            cells.append(f"{delta:+.1f} pt ({len(seeds)})")
        if deltas and method != "full":
            out.append(f"| {method} | " + " | ".join(cells) + f" | **{statistics.median(deltas):+.1f} pt** | {statistics.median(ratios):.3f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

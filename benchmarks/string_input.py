"""What the in-graph tokenizer costs: the string-in bundle beside the ids-in bundle + Python ``tokenizers``.

    .venv/bin/python benchmarks/string_input.py [--texts 400] [--loads 15] [--out build/bench-string-input]

Exports the embedded all-MiniLM-L6-v2 from samples/search_texts.txt (an encoder: no fine-tuning) with the product
itself, once with ``--tokenizer ids`` and once with ``--tokenizer in-graph``, for the cpu target (fusions + int8,
model.onnx) and the android target (int8, model.ort), under ``--oov unk`` (the corpus-pruned tokenizer) and
``--oov remap`` (the original 30,522-token tokenizer and the id table). Then, in this one process, on one intra-op
thread:

- bytes: the model file of each bundle, and what ``pema-export scan --tokenizer in-graph`` predicted it adds;
- session load: a fresh session per load, ids-in (its session + ``Tokenizer.from_file``) and string-in alternating;
- latency per text: texts of samples/heldout.txt, then app_texts.txt, at batch 1, each run 5 times per side with the
  sides alternating (ids-in = ``tokenizers`` encode + session run); a text counts its fastest run per side, the
  table the median over texts; and the tokenizer alone (Python ``tokenizers`` encode vs the graph's tokenizer part).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
MAX_LENGTH = 128


def build(out: Path, oov: str, target: str, tokenizer: str) -> Path:
    """The bundle ``pema-export --target TARGET --oov OOV --tokenizer TOKENIZER`` writes (built once, then reused)."""
    from pema_export.pipeline import ExportOptions, run

    bundle = out / f"{oov}-{target}-{tokenizer}"
    if not (bundle / "pema-manifest.json").exists():
        run(ExportOptions(corpus=[str(SAMPLES / "search_texts.txt")], out=str(bundle / "model.onnx"), target=target,
                          max_length=MAX_LENGTH, oov=oov, tokenizer=tokenizer))
    return bundle


def predicted_added_bytes(oov: str, target: str) -> int:
    """What the scan predicts the in-graph tokenizer adds to the bundle (in-graph minus ids prediction)."""
    from pema_export.scan import ScanOptions, scan_report

    options = dict(corpus=[str(SAMPLES / "search_texts.txt")], target=target, oov=oov)
    in_graph = scan_report(ScanOptions(**options, tokenizer="in-graph"))["predicted_bytes"]["total"]
    return in_graph - scan_report(ScanOptions(**options))["predicted_bytes"]["total"]


def bundle_bytes(bundle: Path) -> int:
    return sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file())


def texts() -> list[str]:
    lines = []
    for name in ("heldout.txt", "app_texts.txt"):
        lines += [line.split("\t", 1)[-1] for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def options(custom_ops: bool) -> ort.SessionOptions:
    from pema_export.string_input import session_options

    chosen = session_options(threads=1) if custom_ops else ort.SessionOptions()
    chosen.intra_op_num_threads, chosen.inter_op_num_threads = 1, 1
    return chosen


def load_times(ids_model: Path, string_model: Path, tokenizer_path: Path, loads: int) -> tuple[float, float]:
    ids_ms, string_ms = [], []
    for _ in range(loads):
        start = time.perf_counter()
        ort.InferenceSession(str(ids_model), options(False), providers=["CPUExecutionProvider"])
        Tokenizer.from_file(str(tokenizer_path))
        ids_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        ort.InferenceSession(str(string_model), options(True), providers=["CPUExecutionProvider"])
        string_ms.append((time.perf_counter() - start) * 1000)
    return statistics.median(ids_ms), statistics.median(string_ms)


def latencies(ids_model: Path, string_model: Path, tokenizer_path: Path, sample: list[str], rounds: int = 5) -> dict[str, float]:
    """Median over texts of each text's fastest of ``rounds`` runs, ms at batch 1: ids-in (tokenizers + session),
    string-in; and each tokenizer alone."""
    from pema_export.string_input.verify import tokenizer_only

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    with_ids = ort.InferenceSession(str(ids_model), options(False), providers=["CPUExecutionProvider"])
    with_text = ort.InferenceSession(str(string_model), options(True), providers=["CPUExecutionProvider"])
    graph_tokenizer = None  # the tokenizer part alone, cut from the .onnx (an .ort cannot be cut)
    if string_model.suffix == ".onnx":
        graph_tokenizer = ort.InferenceSession(tokenizer_only(string_model), options(True), providers=["CPUExecutionProvider"])
    takes = {i.name for i in with_ids.get_inputs()}
    times = {"ids": [], "string": [], "tokenizers": [], "graph_tokenizer": []}
    for text in sample[:5]:  # warm-up
        with_text.run(None, {"text": np.array([text], dtype=object)})
    for text in sample:
        batch = {"text": np.array([text], dtype=object)}
        best = {key: float("inf") for key in times}
        # each side `rounds` times, alternating; a text's time is its fastest run (this machine is shared: the
        # minimum drops the runs another process preempted)
        for _ in range(rounds):
            start = time.perf_counter()
            ids = tokenizer.encode(text).ids
            tokenized = time.perf_counter()
            feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
            if "token_type_ids" in takes:
                feed["token_type_ids"] = np.zeros((1, len(ids)), np.int64)
            with_ids.run(None, feed)
            done = time.perf_counter()
            best["ids"] = min(best["ids"], (done - start) * 1000)
            best["tokenizers"] = min(best["tokenizers"], (tokenized - start) * 1000)
            start = time.perf_counter()
            with_text.run(None, batch)
            best["string"] = min(best["string"], (time.perf_counter() - start) * 1000)
            if graph_tokenizer is not None:
                start = time.perf_counter()
                graph_tokenizer.run(None, batch)
                best["graph_tokenizer"] = min(best["graph_tokenizer"], (time.perf_counter() - start) * 1000)
        for key, value in best.items():
            if value != float("inf"):
                times[key].append(value)
    return {key: statistics.median(values) for key, values in times.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400, help="texts timed per side (from heldout.txt, then app_texts.txt)")
    parser.add_argument("--loads", type=int, default=15, help="session loads per side")
    parser.add_argument("--out", default=str(REPO / "build" / "bench-string-input"))
    args = parser.parse_args()
    sample = texts()[: args.texts]
    rows, sizes = [], []
    for oov in ("unk", "remap"):
        for target, name in (("cpu", "model.onnx"), ("android", "model.ort")):
            ids_bundle, string_bundle = (build(Path(args.out), oov, target, tokenizer) for tokenizer in ("ids", "in-graph"))
            ids_model, string_model, tokenizer_path = ids_bundle / name, string_bundle / name, ids_bundle / "tokenizer.json"
            vocabulary = len(json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]["vocab"])
            load_ids, load_string = load_times(ids_model, string_model, tokenizer_path, args.loads)
            timed = latencies(ids_model, string_model, tokenizer_path, sample)
            label = f"--oov {oov}: {target} {name}, tokenizer.json {vocabulary:,} tokens"
            rows.append((label, ids_model.stat().st_size, string_model.stat().st_size, load_ids, load_string, timed))
            sizes.append((label, bundle_bytes(string_bundle) - bundle_bytes(ids_bundle), predicted_added_bytes(oov, target)))
    print(f"all-MiniLM-L6-v2 from samples/search_texts.txt, pema-export --tokenizer ids / in-graph (cpu: fusions + int8; android: "
          f"int8, .ort Fixed arm), max_length {MAX_LENGTH}, 1 intra-op thread, {len(sample)} texts, per text the fastest of 5 "
          "alternating runs per side, medians over texts\n")
    print("| bundle | file bytes, ids-in / string-in (added) | session load ms, ids-in + tokenizers / string-in | "
          "latency per text ms, ids-in + tokenizers / string-in (added) | tokenizer alone ms, tokenizers / in-graph |")
    print("|---|---|---|---|---|")
    for label, ids_bytes, string_bytes, load_ids, load_string, timed in rows:
        alone = f"{timed['tokenizers']:.3f} / {timed['graph_tokenizer']:.3f}" if "graph_tokenizer" in timed else f"{timed['tokenizers']:.3f} / -"
        print(f"| {label} | {ids_bytes:,} / {string_bytes:,} (+{string_bytes - ids_bytes:,}) | {load_ids:.1f} / {load_string:.1f} | "
              f"{timed['ids']:.3f} / {timed['string']:.3f} ({timed['string'] - timed['ids']:+.3f}) | {alone} |")
    print("\n| bundle | bundle bytes added by --tokenizer in-graph | predicted by pema-export scan |")
    print("|---|---:|---:|")
    for label, added, predicted in sizes:
        print(f"| {label} | {added:,} | {predicted:,} ({predicted - added:+,}) |")


if __name__ == "__main__":
    main()

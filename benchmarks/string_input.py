"""What the in-graph tokenizer costs: the string-in model beside the ids-in model + Python ``tokenizers``.

    .venv/bin/python benchmarks/string_input.py [--texts 400] [--loads 15] [--out build/bench-string-input]

Builds the cpu bundle of the embedded all-MiniLM-L6-v2 from samples/search_texts.txt (an encoder: no fine-tuning;
fusions + int8, as `pema-export export --target cpu` ships it), adds the string input to its model.onnx, and
converts both to the ORT format as the android target would. Then, in this one process, on one intra-op thread:

- bytes: the model file with and without the tokenizer (.onnx and .ort);
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


def build(out: Path, oov: str) -> tuple[Path, Path, Path]:
    """The cpu bundle's model.onnx, its string-in twin and the bundle's tokenizer.json (built once, then reused).

    ``oov``: "remap" ships the original tokenizer (30,522 tokens) and an id table; "unk" the corpus-pruned one."""
    from pema_export.stages.ort_format import convert_to_ort
    from pema_export.pipeline import ExportOptions, run
    from pema_export.string_input import add_string_input, check_extensions, check_fidelity, plan_string_input
    from pema_export.string_input.verify import tokenizer_only

    bundle = out / "bundle"
    if not (bundle / "model.onnx").exists():
        run(ExportOptions(corpus=[str(SAMPLES / "search_texts.txt")], out=str(bundle / "model.onnx"), target="cpu", max_length=MAX_LENGTH, oov=oov))
    tokenizer_json = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    pad_id = json.loads((bundle / "config.json").read_text(encoding="utf-8")).get("pad_token_id") or 0
    plan = plan_string_input(tokenizer_json, max_length=MAX_LENGTH, pad_id=pad_id)
    string_model = add_string_input(bundle / "model.onnx", plan, out / "string" / "model.onnx")
    check_fidelity(tokenizer_only(string_model), tokenizer_json, texts(), max_length=MAX_LENGTH)
    for name, model, library in (("ids", bundle / "model.onnx", None), ("string", string_model, check_extensions())):
        target = out / "ort" / name / "model.ort"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            convert_to_ort(model, target, "Fixed", "arm", custom_op_library=library)
    return bundle / "model.onnx", string_model, bundle / "tokenizer.json"


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
    rows = []
    for oov in ("unk", "remap"):
        out = Path(args.out) / oov
        ids_onnx, string_onnx, tokenizer_path = build(out, oov)
        ids_ort, string_ort = out / "ort" / "ids" / "model.ort", out / "ort" / "string" / "model.ort"
        vocabulary = len(json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]["vocab"])
        for kind, ids_model, string_model in (("model.onnx", ids_onnx, string_onnx), ("model.ort", ids_ort, string_ort)):
            load_ids, load_string = load_times(ids_model, string_model, tokenizer_path, args.loads)
            timed = latencies(ids_model, string_model, tokenizer_path, sample)
            label = f"--oov {oov}: {kind}, tokenizer.json {vocabulary:,} tokens"
            rows.append((label, ids_model.stat().st_size, string_model.stat().st_size, load_ids, load_string, timed))
    print(f"all-MiniLM-L6-v2 from samples/search_texts.txt, cpu target (fusions + int8; .ort: Fixed, arm), max_length {MAX_LENGTH}, "
          f"1 intra-op thread, {len(sample)} texts, per text the fastest of 5 alternating runs per side, medians over texts\n")
    print("| bundle | file bytes, ids-in / string-in (added) | session load ms, ids-in + tokenizers / string-in | "
          "latency per text ms, ids-in + tokenizers / string-in (added) | tokenizer alone ms, tokenizers / in-graph |")
    print("|---|---|---|---|---|")
    for label, ids_bytes, string_bytes, load_ids, load_string, timed in rows:
        alone = f"{timed['tokenizers']:.3f} / {timed['graph_tokenizer']:.3f}" if "graph_tokenizer" in timed else f"{timed['tokenizers']:.3f} / -"
        print(f"| {label} | {ids_bytes:,} / {string_bytes:,} (+{string_bytes - ids_bytes:,}) | {load_ids:.1f} / {load_string:.1f} | "
              f"{timed['ids']:.3f} / {timed['string']:.3f} ({timed['string'] - timed['ids']:+.3f}) | {alone} |")


if __name__ == "__main__":
    main()

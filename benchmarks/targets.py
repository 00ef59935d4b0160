"""Each target's bundle beside the plain optimum fp32 export of the same model, measured in the same run.

    .venv/bin/python benchmarks/targets.py [--reps 5] [--reuse] [--out build/bench-targets]

Builds (or, with --reuse, reuses) one bundle per built-in target from the embedded all-MiniLM-L6-v2 fine-tuned on
samples/app_texts.txt, and the plain baseline: optimum's fp32 export of the same architecture with the full
vocabulary. Then, per model file, in a fresh process each time so peak RSS is that model's alone: session load
time, peak RSS after load, and median latency at batch 1 for a short text and a 128-token text (onnxruntime, CPU EP,
one intra-op thread). Baseline and target processes alternate within every repetition; the table shows medians over
the repetitions and the ratio target / baseline. Sizes: the model file, and every file the app ships (what the
manifest lists) compressed with zip deflate, as an APK/IPA stores them.

This measures on the machine it runs on (x86 here): the .ort files run through the same onnxruntime, not a phone.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
TARGETS = ("cpu", "android", "ios", "web")
# the model file each target's app loads (web: the q8 file transformers.js loads in browsers by default)
MODEL_FILE = {"cpu": "model.onnx", "android": "model.ort", "ios": "model.ort", "web": "onnx/model_quantized.onnx"}
SHORT_TEXT = "where is my order?"

# Runs in a child process: load one model, measure, print JSON.
_PROBE = r"""
import json, statistics, sys, time
import numpy as np
import onnxruntime as ort
path, short_ids, long_ids, runs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
start = time.perf_counter()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - start) * 1000
# VmHWM, not ru_maxrss: ru_maxrss carries over the forking parent's peak across exec, VmHWM starts afresh
rss_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
names = {i.name for i in session.get_inputs()}
def feed(ids):
    f = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
    if "token_type_ids" in names:
        f["token_type_ids"] = np.zeros((1, len(ids)), np.int64)
    return f
def median_ms(ids):
    f = feed(ids)
    for _ in range(5):
        session.run(None, f)
    times = []
    for _ in range(runs):
        t = time.perf_counter(); session.run(None, f); times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
print(json.dumps({"load_ms": load_ms, "peak_rss_mb": rss_kib / 1024, "short_ms": median_ms(short_ids), "long_ms": median_ms(long_ids)}))
"""


def build_bundles(out: Path, reuse: bool) -> dict[str, Path]:
    bundles = {}
    exe = Path(sys.executable).parent / "pema-export"
    for target in TARGETS:
        model = out / target / "model.onnx"
        if not (reuse and (model.parent / "pema-manifest.json").is_file()):
            print(f"building {target} ...", file=sys.stderr, flush=True)
            subprocess.run([str(exe), "--corpus", str(SAMPLES / "app_texts.txt"), "--out", str(model), "--target", target,
                            "--quiet"], check=True)
        bundles[target] = model.parent
    return bundles


def build_plain(out: Path, reuse: bool) -> Path:
    """optimum's fp32 export of MiniLM as a 6-label classifier, full vocabulary: what a user gets without us."""
    folder = out / "plain"
    if reuse and (folder / "model.onnx").is_file():
        return folder
    print("building the plain optimum export ...", file=sys.stderr, flush=True)
    import shutil

    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import AutoModelForSequenceClassification

    from pema_export.models import resolve_model

    source = resolve_model(None)
    labels = sorted({line.split("\t", 1)[0] for line in (SAMPLES / "app_texts.txt").read_text().splitlines() if line})
    model = AutoModelForSequenceClassification.from_pretrained(str(source.path), num_labels=len(labels))
    onnx_export_from_model(model, output=str(folder), task="text-classification", opset=18, do_validation=False,
                           preprocessors=[])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source.path / name, folder / name)
    return folder


def shipped_files(bundle: Path) -> list[Path]:
    manifest = bundle / "pema-manifest.json"
    if manifest.is_file():
        return [bundle / name for name in json.loads(manifest.read_text())["files"]]
    return [bundle / name for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json")]


def deflate_bytes(files: list[Path], root: Path) -> int:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(files):
            archive.write(path, str(path.relative_to(root)))
    return buffer.tell()


def probe_inputs(bundle: Path) -> tuple[list[int], list[int]]:
    """The same texts through each bundle's own tokenizer: a short question and exactly 128 tokens of corpus text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    corpus = " ".join(line.split("\t", 1)[1] for line in (SAMPLES / "app_texts.txt").read_text().splitlines()[:40])
    long_ids = tokenizer.encode(corpus).ids[:127] + [tokenizer.token_to_id("[SEP]")]
    return tokenizer.encode(SHORT_TEXT).ids, long_ids


def probe(model: Path, inputs: tuple[list[int], list[int]], runs: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(model), json.dumps(inputs[0]), json.dumps(inputs[1]), str(runs)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench-targets")
    parser.add_argument("--reps", type=int, default=5, help="alternating baseline/target process pairs per target")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per latency median inside each process")
    parser.add_argument("--reuse", action="store_true", help="reuse bundles already built under --out")
    args = parser.parse_args()

    bundles = build_bundles(args.out, args.reuse)
    plain = build_plain(args.out, args.reuse)
    plain_inputs = probe_inputs(plain)
    rows = []
    for target in TARGETS:
        bundle = bundles[target]
        model = bundle / MODEL_FILE[target]
        inputs = probe_inputs(bundle)
        assert len(inputs[1]) == len(plain_inputs[1]) == 128
        ours, base = [], []
        for rep in range(args.reps):
            # alternate which side goes first, so drift on a shared machine hits both alike
            order = [("base", plain / "model.onnx", plain_inputs), ("ours", model, inputs)]
            for side, path, ids in order if rep % 2 == 0 else reversed(order):
                (base if side == "base" else ours).append(probe(path, ids, args.runs))
        row = {"target": target, "model_file": MODEL_FILE[target]}
        row["file_bytes"] = (model.stat().st_size, (plain / "model.onnx").stat().st_size)
        row["bundle_deflate_bytes"] = (deflate_bytes(shipped_files(bundle), bundle), deflate_bytes(shipped_files(plain), plain))
        for key in ("load_ms", "peak_rss_mb", "short_ms", "long_ms"):
            row[key] = (statistics.median(m[key] for m in ours), statistics.median(m[key] for m in base))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(render(rows, args))


def render(rows: list[dict], args) -> str:
    columns = [("file_bytes", "model file bytes", "{:,.0f}"), ("bundle_deflate_bytes", "bundle, zip-deflated", "{:,.0f}"),
               ("load_ms", "session load ms", "{:.1f}"), ("peak_rss_mb", "peak RSS after load MB", "{:.0f}"),
               ("short_ms", "latency short ms", "{:.2f}"), ("long_ms", "latency 128 tok ms", "{:.2f}")]
    lines = ["| target (file) | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            ours, base = row[key]
            cells.append(f"{fmt.format(ours)} / {fmt.format(base)} = **{ours / base:.2f}×**")
        lines.append(f"| {row['target']} ({row['model_file']}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Each cell: pema-export target / plain optimum fp32 export = ratio; medians of {args.reps} alternating "
                 f"process pairs, {args.runs} timed runs per latency, 1 intra-op thread.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

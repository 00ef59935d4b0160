"""How close `pema-export scan`'s predicted bundle bytes come to the bundle the export writes.

    .venv/bin/python benchmarks/predict_vs_written.py [--oov tail] [--corpus samples/search_texts.txt]

For each target and number format, the scan's prediction (what --max-bytes relies on) and the written bundle's bytes
(every file, the manifest included), for the embedded all-MiniLM-L6-v2 as a sentence encoder on an unlabelled
corpus (no training, so each row takes about a minute). The promise: never below, a small fraction above.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = [("cpu", "none"), ("cpu", "int8"), ("cpu", "fp16"), ("android", "none"), ("android", "int8"), ("web", "int8"),
           ("web", "fp16")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oov", default="tail")
    parser.add_argument("--corpus", default=str(REPO / "samples" / "search_texts.txt"))
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "pema-export")
    print(f"--oov {args.oov}, corpus {Path(args.corpus).name}")
    print("| target | quantize | predicted | written | predicted - written | % |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for target, quantize in TARGETS:
        options = ["--corpus", args.corpus, "--oov", args.oov, "--target", target, "--quantize", quantize]
        scan = subprocess.run([exe, "scan", *options, "--json"], capture_output=True, text=True, check=True)
        predicted = json.loads(scan.stdout)["predicted_bytes"]["total"]
        with tempfile.TemporaryDirectory(prefix="pema-predict-") as scratch:
            out = Path(scratch) / "bundle" / "model.onnx"
            subprocess.run([exe, *options, "--out", str(out), "--quiet"], capture_output=True, text=True, check=True)
            written = sum(f.stat().st_size for f in out.parent.rglob("*") if f.is_file() and f.name != "pema-timings.json")
        rows.append({"target": target, "quantize": quantize, "predicted": predicted, "written": written})
        print(f"| {target} | {quantize} | {predicted:,} | {written:,} | {predicted - written:+,} | "
              f"{(predicted - written) / written:+.3%} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

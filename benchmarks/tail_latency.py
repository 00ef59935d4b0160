"""What the compressed tail costs at run time: the cpu bundle with --oov tail, and the default (--oov auto: the tail
and an encoder's 2,000 prior words), against the same bundle with --oov unk.

    .venv/bin/python benchmarks/tail_latency.py [--quantize int8] [--rounds 5]

The bundles are all-MiniLM-L6-v2 as a sentence encoder on samples/search_texts.txt for the cpu target (onnxruntime's
transformer fusions, then the number format). The unk graph gets all of them; the tail graph loses one,
EmbedLayerNormalization (it needs a Gather straight from input_ids, and the tail decodes its rows first), and
keeps the rest. Each model runs the held-out texts one at a time on one thread, as an app does; the sides
alternate for --rounds rounds in one process, and the table gives per-text medians, load time and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort

    from pema_export.vocab import open_tokenizer

    exe = str(Path(sys.executable).parent / "pema-export")
    texts = [line.split("\t", 1)[-1] for line in (REPO / "samples" / "heldout.txt").read_text(encoding="utf-8").splitlines() if line]
    with tempfile.TemporaryDirectory(prefix="pema-latency-") as scratch:
        sides = {}
        # "auto": the default, an encoder's tail plus the exact rows of its language's 2,000 most frequent words
        for oov in ("unk", "tail", "auto"):
            out = Path(scratch) / oov / "model.onnx"
            subprocess.run([exe, "--corpus", str(REPO / "samples" / "search_texts.txt"), "--oov", oov, "--quantize", args.quantize,
                            "--out", str(out), "--quiet"], check=True, capture_output=True)
            tokenizer = open_tokenizer(out.parent / "tokenizer.json")
            ops = sorted({node.op_type for node in onnx.load(str(out)).graph.node})
            sides[oov] = {"path": out, "ids": [np.asarray([e.ids], dtype=np.int64) for e in tokenizer.encode_batch(texts)],
                          "fused": [op for op in ("EmbedLayerNormalization", "Attention", "QAttention", "SkipLayerNormalization",
                                                  "BiasGelu") if op in ops], "times": [], "loads": []}
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        for _ in range(args.rounds):
            for side in sides.values():
                started = time.perf_counter()
                session = ort.InferenceSession(str(side["path"]), options, providers=["CPUExecutionProvider"])
                side["loads"].append(time.perf_counter() - started)
                inputs = {i.name for i in session.get_inputs()}
                for ids in side["ids"]:
                    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
                    feeds = {k: v for k, v in feeds.items() if k in inputs}
                    started = time.perf_counter()
                    session.run(None, feeds)
                    side["times"].append(time.perf_counter() - started)
        result = {}
        for oov, side in sides.items():
            result[oov] = {"model_bytes": side["path"].stat().st_size, "fused": side["fused"],
                           "per_text_ms": 1000 * statistics.median(side["times"]), "load_ms": 1000 * statistics.median(side["loads"])}
    print(f"all-MiniLM-L6-v2 encoder, cpu --quantize {args.quantize}, {len(texts)} held-out texts x {args.rounds} rounds, 1 thread")
    print("| --oov | model bytes | fusions | per text ms (median) | load ms (median) |")
    print("|---|---:|---|---:|---:|")
    for oov, row in result.items():
        print(f"| {oov} | {row['model_bytes']:,} | {', '.join(row['fused'])} | {row['per_text_ms']:.3f} | {row['load_ms']:.1f} |")
    print(f"tail / unk per text: {result['tail']['per_text_ms'] / result['unk']['per_text_ms']:.3f}; "
          f"auto (the default: tail + 2,000 prior words) / unk: {result['auto']['per_text_ms'] / result['unk']['per_text_ms']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

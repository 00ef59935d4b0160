"""How the compressed tail's k-means is run: sample size and iterations against reconstruction and time.

    .venv/bin/python benchmarks/tail_codes.py [--row-bytes 24 96] [--grid 64:8 128:12 256:20]

The tail rows of all-MiniLM-L6-v2 (embedded) for the corpus samples/search_texts.txt (the rows an encoder export
compresses) are product-quantized with each (rows sampled per centroid, Lloyd iterations) pair of --grid, as
``rowcodes.build_tail_code`` does. Printed per pair: the learning seconds, the encoding seconds of every tail row,
and the mean and 10th-percentile cosine of the decoded rows to the pretrained rows. The pairs run alternately in
--repeats rounds in one process, so a shared machine's load falls on each; times are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row-bytes", type=int, nargs="+", default=[24, 96])
    parser.add_argument("--grid", nargs="+", default=["64:8", "64:12", "128:12", "256:20"],
                        help="ROWS_PER_CENTROID:ITERATIONS pairs")
    parser.add_argument("--corpus", default=str(REPO / "samples" / "search_texts.txt"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from pema_export import rowcodes
    from pema_export.models import resolve_model
    from pema_export.vocab import open_tokenizer

    source = resolve_model(None)
    matrix = load_file(source.path / "model.safetensors")["embeddings.word_embeddings.weight"].numpy()
    tokenizer = open_tokenizer(json.loads(source.tokenizer_json.read_text(encoding="utf-8")))
    texts = [line.strip() for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    used = {i for encoding in tokenizer.encode_batch(texts) for i in encoding.ids}
    tail_ids = np.setdiff1d(np.arange(len(matrix)), np.array(sorted(used)))
    tail = matrix[tail_ids]
    print(f"all-MiniLM-L6-v2: {len(tail_ids):,} tail rows outside {Path(args.corpus).name}; {torch.get_num_threads()} threads",
          file=sys.stderr)
    grid = [tuple(map(int, pair.split(":"))) for pair in args.grid]
    results: dict[tuple[int, int, int], list[dict]] = {}
    for _ in range(args.repeats):
        for row_bytes in args.row_bytes:
            for per_centroid, iterations in grid:
                started = time.perf_counter()
                quantizer = rowcodes.learn_product_quantizer(tail, row_bytes, iterations=iterations,
                                                             sample=per_centroid * rowcodes.CENTROIDS)
                learned = time.perf_counter()
                codes = quantizer.encode(tail)
                encoded = time.perf_counter()
                cosines = rowcodes.row_cosines(quantizer.decode(codes), tail)
                row = {"row_bytes": row_bytes, "per_centroid": per_centroid, "iterations": iterations,
                       "learn_s": learned - started, "encode_s": encoded - learned,
                       "cosine_mean": float(cosines.mean()), "cosine_p10": float(np.percentile(cosines, 10))}
                print(json.dumps(row), file=sys.stderr, flush=True)
                results.setdefault((row_bytes, per_centroid, iterations), []).append(row)
    print("| bytes per row | rows per centroid | iterations | learn s | encode s | row cosine mean | p10 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for (row_bytes, per_centroid, iterations), runs in results.items():
        print(f"| {row_bytes} | {per_centroid} | {iterations} | {statistics.median(r['learn_s'] for r in runs):.1f} | "
              f"{statistics.median(r['encode_s'] for r in runs):.1f} | {runs[0]['cosine_mean']:.4f} | {runs[0]['cosine_p10']:.4f} |")


if __name__ == "__main__":
    main()

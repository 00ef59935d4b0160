"""How long the compressed tail takes to build at XLM-R scale, and how much memory it needs.

    .venv/bin/python benchmarks/tail_scale.py [--row-bytes 48 192] [--kept 20000]

Writes an XLM-R-base-shaped input embedding (250,002 x 768, fp32, random values: the worst case for k-means, which
finds no structure to exploit) to a temporary safetensors file, then, in a fresh process per code size, builds the
tail exactly as an export does: the rows outside a seeded set of kept ids are read from the checkpoint in blocks,
a product quantizer is learned from a seeded sample of them, and every tail row is encoded. Each process reports
its wall time and its peak RSS (VmHWM), compared with the fp32 matrix's bytes. The goal (issue 11): under 2
minutes on 2 cores, peak memory under 2x the matrix.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS, WIDTH = 250_002, 768
TENSOR = "embeddings.word_embeddings.weight"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row-bytes", type=int, nargs="+", default=[48, 192], help="sub-vectors (bytes) per tail row")
    parser.add_argument("--kept", type=int, default=20_000, help="kept (exact) rows; the rest is the tail")
    parser.add_argument("--child", nargs=3, metavar=("CHECKPOINT", "ROW_BYTES", "KEPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))
    with tempfile.TemporaryDirectory(prefix="pema-tail-scale-") as folder:
        checkpoint = Path(folder) / "model.safetensors"
        write_matrix(checkpoint)
        rows = []
        for row_bytes in args.row_bytes:
            done = subprocess.run([sys.executable, __file__, "--child", str(checkpoint), str(row_bytes), str(args.kept)],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    matrix_mb = ROWS * WIDTH * 4 / 1e6
    print(f"XLM-R-shaped embedding {ROWS:,} x {WIDTH} fp32 = {matrix_mb:,.0f} MB; {args.kept:,} rows kept exact")
    print("| bytes per tail row | tail rows | codes MB | build s | peak RSS MB | × matrix | row cosine mean |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['row_bytes']} | {row['tail_rows']:,} | {row['codes_mb']:.1f} | {row['seconds']:.1f} | "
              f"{row['peak_rss_mb']:,.0f} | {row['peak_rss_mb'] / matrix_mb:.2f} | {row['cosine_mean']:.3f} |")
    print(json.dumps({"matrix_mb": round(matrix_mb), "rows": rows}))


def write_matrix(path: Path) -> None:
    """A safetensors file with one fp32 [ROWS, WIDTH] tensor, written in blocks (never whole in memory)."""
    header = json.dumps({TENSOR: {"dtype": "F32", "shape": [ROWS, WIDTH], "data_offsets": [0, ROWS * WIDTH * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    rng = np.random.default_rng(0)
    with path.open("wb") as handle:
        handle.write(len(header).to_bytes(8, "little") + header)
        for start in range(0, ROWS, 16_384):
            count = min(16_384, ROWS - start)
            handle.write((rng.standard_normal((count, WIDTH), dtype=np.float32) * 0.05).tobytes())


def child(checkpoint_path: Path, row_bytes: int, kept: int) -> None:
    from pema_export.pema import find_safetensors
    from pema_export.rowcodes import build_tail_code

    checkpoint = find_safetensors(checkpoint_path.parent)
    kept_ids = np.sort(np.random.default_rng(1).choice(ROWS, size=kept, replace=False))
    tail_ids = np.setdiff1d(np.arange(ROWS), kept_ids)
    started = time.perf_counter()
    code = build_tail_code(lambda ids: checkpoint.read(TENSOR, ids).numpy(), tail_ids, row_bytes)
    seconds = time.perf_counter() - started
    print(json.dumps({"row_bytes": row_bytes, "tail_rows": len(tail_ids), "codes_mb": code.codes.nbytes / 1e6,
                      "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb()), "cosine_mean": code.cosine["mean"]}))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()

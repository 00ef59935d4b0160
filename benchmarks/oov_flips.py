"""Where the tail and the full vocabulary disagree: the test texts whose prediction changes, paired, per seed.

    .venv/bin/python benchmarks/oov_flips.py --sets fortunes kjv --seeds 0 1 2 [--row-bytes 96]

The full-vocabulary bundle and the tail bundle of benchmarks/oov_accuracy.py are the same fine-tuned model (the
``--save-full`` checkpoint it keeps in build/oov_accuracy/SET/seedN/full; run it first) and differ only in how the
rows the corpus never used are stored. So an accuracy difference between them is a count of test texts whose
prediction flipped. This exports both from the kept checkpoint, runs each shipped bundle on the set's test texts,
and counts the flips each way: "lost" (the full vocabulary right, the tail wrong) and "gained" (the reverse), with
an exact two-sided sign test of lost against gained: the chance of a split at least this uneven if a flip were
equally likely to go either way. Per seed, then pooled over the seeds of a set.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from oov_accuracy import export, shipped_predictions, whole_vocabulary  # noqa: E402


def sign_test(lost: int, gained: int) -> float:
    """Exact two-sided binomial test of ``lost`` vs ``gained`` at p = 1/2."""
    n, k = lost + gained, min(lost, gained)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["fortunes", "kjv"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--row-bytes", type=int, default=96, help="the tail's bytes a row")
    parser.add_argument("--evalsets-dir", default=str(REPO / "build" / "evalsets"))
    args = parser.parse_args()
    print(f"| set | seed | test texts | flipped | lost (full right, tail-{args.row_bytes} wrong) | gained | net Δ | sign test p |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for set_name in args.sets:
        test = Path(args.evalsets_dir) / set_name / "test.txt"
        totals = [0, 0, 0]
        for seed in args.seeds:
            checkpoint = REPO / "build" / "oov_accuracy" / set_name / f"seed{seed}" / "full"
            if not checkpoint.is_dir() or not test.is_file():
                sys.exit(f"oov_flips: no {checkpoint} or {test}; run benchmarks/oov_accuracy.py --sets {set_name} --seeds {seed} first")
            with tempfile.TemporaryDirectory(prefix="pema-flips-") as scratch:
                scratch = Path(scratch)
                texts = scratch / "texts.txt"  # the set's training texts without labels: these exports do not train
                train = (Path(args.evalsets_dir) / set_name / "train.txt").read_text(encoding="utf-8").splitlines()
                texts.write_text("".join(line.split("\t", 1)[1] + "\n" for line in train if line.strip()), encoding="utf-8")
                common = ["--model", str(checkpoint), "--corpus", str(texts), "--quantize", "none", "--seed", str(seed)]
                predictions = {}
                for name, options in (("full", ["--oov", "unk", "--keep-tokens", str(whole_vocabulary(checkpoint, scratch))]),
                                      ("tail", ["--oov", "tail", "--tail-row-bytes", str(args.row_bytes)])):
                    row = export(scratch / name, [*common, *options], test)
                    if "error" in row:
                        sys.exit(f"oov_flips: the {name} export failed: {row['error']}")
                    predictions[name], labels, _ = shipped_predictions(scratch / name, test)
            lost = sum(f == y != t for f, t, y in zip(predictions["full"], predictions["tail"], labels))
            gained = sum(t == y != f for f, t, y in zip(predictions["full"], predictions["tail"], labels))
            flipped = sum(f != t for f, t in zip(predictions["full"], predictions["tail"]))
            totals = [totals[0] + flipped, totals[1] + lost, totals[2] + gained]
            print(f"| {set_name} | {seed} | {len(labels)} | {flipped} | {lost} | {gained} | "
                  f"{(gained - lost) / len(labels) * 100:+.2f} pt | {sign_test(lost, gained):.2f} |", flush=True)
        flipped, lost, gained = totals
        print(f"| {set_name} | all | {len(labels) * len(args.seeds)} | {flipped} | {lost} | {gained} | "
              f"{(gained - lost) / (len(labels) * len(args.seeds)) * 100:+.2f} pt | {sign_test(lost, gained):.2f} |", flush=True)


if __name__ == "__main__":
    main()

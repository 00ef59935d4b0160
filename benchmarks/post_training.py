"""Training time against the time of everything after it (export, verification, stages, bundle), for one or more
checkouts of pema-export, on the same corpus.

Each export is ``python -m pema_export`` in its own process with that checkout first on PYTHONPATH; its log lines
are time-stamped as they arrive, so the same measure applies to any version, with or without ``pema-timings.json``:

- training: from the "fine-tuning on" line to the "held-out accuracy" line;
- after training: from that line to the end of the process (the bundle written, the summary printed).

Checkouts run side by side (the default: on a shared machine both then see the same load) or, with ``--in-turn``,
one at a time; the order alternates from one repeat to the next. Where a checkout writes ``pema-timings.json`` its per-step seconds are printed too.

    .venv/bin/python benchmarks/post_training.py --checkout before=/path/to/main --checkout after=. \\
        --corpus build/evalsets/debian/train.txt --epochs 3 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export(name: str, checkout: Path, corpus: Path, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "pema_export", "--corpus", str(corpus), "--out", str(out / "model.onnx"), *extra]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout)
    for line in process.stderr:
        lines.append((time.perf_counter() - start, line.rstrip()))
    stdout = process.stdout.read()
    code = process.wait()
    end = time.perf_counter() - start
    if code:  # a RuntimeError, not SystemExit: a thread drops SystemExit without a word
        raise RuntimeError(f"{name}: exit {code}\n" + "\n".join(line for _, line in lines[-20:]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.log").write_text("".join(f"{t:8.1f} {line}\n" for t, line in lines), encoding="utf-8")
    began = next(t for t, line in lines if line.startswith("pema-export: fine-tuning on"))
    # the line training ends with: "held-out accuracy ..." (or the task's metric); --oov auto's reason also says held-out
    trained = next(t for t, line in lines if t >= began and line.startswith("pema-export: held-out "))
    result = {"checkout": name, "training_s": round(trained - began, 1), "after_training_s": round(end - trained, 1),
              "load_average": round(os.getloadavg()[0], 1)}
    result["ratio"] = round(result["after_training_s"] / result["training_s"], 3)
    timings = out / "pema-timings.json"
    if timings.exists():
        result["steps"] = json.loads(timings.read_text(encoding="utf-8"))["seconds"]
    result["summary"] = stdout.strip().splitlines()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--corpus", type=Path, default=REPO / "build" / "evalsets" / "debian" / "train.txt")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--in-turn", action="store_true", help="one export at a time, alternating (default: side by side)")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "post-training")
    parser.add_argument("--json", type=Path, help="append each result as a JSON line")
    args, extra = parser.parse_known_args()
    checkouts = [(name, Path(path).resolve()) for name, path in (item.split("=", 1) for item in args.checkout)]
    extra = ["--epochs", str(args.epochs), *extra]
    results: list[dict] = []

    def one(name: str, checkout: Path, repeat: int) -> None:
        try:
            result = export(name, checkout, args.corpus.resolve(), args.work.resolve() / f"{name}-{repeat}", extra)
        except RuntimeError as error:  # e.g. a briefly trained classifier refused by the int8 stage's bound
            print(error, file=sys.stderr, flush=True)
            return
        result["repeat"] = repeat
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.json:
            with args.json.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(result) + "\n")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr)
    for repeat in range(args.repeats):
        order = checkouts if repeat % 2 == 0 else checkouts[::-1]
        if args.in_turn:
            for name, checkout in order:
                one(name, checkout, repeat)
        else:
            threads = [threading.Thread(target=one, args=(name, checkout, repeat)) for name, checkout in order]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    for name, _ in checkouts:
        mine = [r for r in results if r["checkout"] == name]
        if not mine:
            print(f"{name:8s} no export finished")
            continue
        print(f"{name:8s} training {statistics.median(r['training_s'] for r in mine):7.1f} s, after training "
              f"{statistics.median(r['after_training_s'] for r in mine):6.1f} s, ratio "
              f"{statistics.median(r['ratio'] for r in mine):.3f} (median of {len(mine)}; per run "
              f"{', '.join(str(r['ratio']) for r in mine)})")


if __name__ == "__main__":
    main()

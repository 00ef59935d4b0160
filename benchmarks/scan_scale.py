"""A 1,000,000-text corpus through ``pema-export scan`` and the tokenization-fidelity check: throughput and memory.

The corpus is the samples (app_texts, search_texts, heldout) repeated and perturbed, seeded: words dropped, swapped,
doubled, re-cased, spliced from another text, order numbers and typos added, so that most texts differ from every
sample. Each measurement runs in a fresh process (``--child``), which reports

- the RSS after importing the libraries the scan uses (torch and transformers, for the size prediction) and
  opening the model's tokenizer and config (the "model" of a scan: it reads no weights),
- the peak RSS (``VmHWM`` in /proc/self/status) after the work, and their difference: memory beyond the model,
- the wall seconds of the work and its tokens per second, and the CPU seconds of the process (all threads): on a
  shared machine the wall figure depends on the load, the CPU figure much less.

Also measured, for comparison: ``tokenizers``' own ``encode_batch`` throughput on the same texts already in memory
(no reading, no counting), i.e. the most a scan that encodes every text could do on this machine. The scan and
fidelity encode each distinct word once where the tokenizer allows it (pema_export/words.py), so they can beat it.

    .venv/bin/python benchmarks/scan_scale.py                    # 1,000,000 texts in build/scan-scale/
    .venv/bin/python benchmarks/scan_scale.py --texts 100000 --repeats 3
    .venv/bin/python benchmarks/scan_scale.py --model DIR          # another model's tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


def base_texts() -> list[str]:
    texts = []
    for name in ("app_texts.txt", "search_texts.txt", "heldout.txt"):
        for line in (SAMPLES / name).read_text(encoding="utf-8").splitlines():
            text = line.split("\t", 1)[-1].strip()
            if text:
                texts.append(text)
    return texts


def perturbed(texts: list[str], count: int, seed: int):
    """``count`` texts, each a sample with one to three seeded edits."""
    rng = random.Random(seed)
    for _ in range(count):
        words = rng.choice(texts).split()
        for _ in range(rng.randint(1, 3)):
            edit = rng.randrange(7)
            if edit == 0 and len(words) > 2:
                del words[rng.randrange(len(words))]
            elif edit == 1 and len(words) > 1:
                i, j = rng.randrange(len(words)), rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
            elif edit == 2:
                words.insert(rng.randrange(len(words) + 1), rng.choice(words))
            elif edit == 3:
                i = rng.randrange(len(words))
                words[i] = words[i].upper() if rng.random() < 0.5 else words[i].capitalize()
            elif edit == 4:
                other = rng.choice(texts).split()
                words = words[: len(words) // 2 + 1] + other[len(other) // 2:]
            elif edit == 5:
                words.insert(rng.randrange(len(words) + 1), f"#{rng.randrange(100000)}")
            else:
                i = rng.randrange(len(words))
                word = words[i]
                if len(word) > 3:
                    k = rng.randrange(len(word) - 1)
                    words[i] = word[:k] + word[k + 1] + word[k] + word[k + 2:]
        yield " ".join(words)


def write_corpus(path: Path, count: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for text in perturbed(base_texts(), count, seed):
            handle.write(text + "\n")


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child(what: str, corpus: Path, model: str | None) -> dict:
    """One measurement in this (fresh) process."""
    import torch  # noqa: F401  (the scan's size prediction imports both; they are not the corpus's memory)
    import transformers  # noqa: F401

    from pema_export.corpus import batched, iter_texts
    from pema_export.scan import open_source
    from pema_export.vocab import open_tokenizer

    source, tokenizer_json = open_source(model)
    tokenizer = open_tokenizer(tokenizer_json)
    source.read_config()
    model_rss_kb = _status_kb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    if what == "scan":
        from pema_export.scan import ScanOptions, scan_report

        report = scan_report(ScanOptions(corpus=[str(corpus)], model=model))
        texts, tokens = report["texts"], report["tokens"]
        extra = {"kept": report["vocab"]["kept"]}
    elif what == "fidelity":
        from pema_export.scan import scan_vocabulary
        from pema_export.tokenizers import prune_tokenizer
        from pema_export.verify import check_tokenization

        found = scan_vocabulary(source, tokenizer_json, [corpus], oov="unk")
        scanned, scanned_cpu = time.perf_counter(), time.process_time()
        pruned = open_tokenizer(prune_tokenizer(tokenizer_json, found.kept.kept_ids))
        report = check_tokenization(tokenizer, pruned, found.kept, iter_texts([corpus]))
        texts, tokens = report.texts_checked + report.texts_with_dropped_tokens, found.counts.tokens
        start, cpu_start = scanned, scanned_cpu  # the check alone
        extra = {"mismatches": report.tokenization_mismatches}
    else:  # "encode": tokenizers alone, texts already in memory, in the batches the scan uses
        all_texts = list(iter_texts([corpus]))
        model_rss_kb = _status_kb("VmRSS")
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens = 0
        for batch in batched(all_texts, 1024):
            tokens += sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch))
        texts, extra = len(all_texts), {}
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kb = _status_kb("VmHWM")
    return {"what": what, "texts": texts, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds), "cpu_seconds": round(cpu_seconds, 2),
            "tokens_per_cpu_s": round(tokens / cpu_seconds), "load_average": round(os.getloadavg()[0], 1), "model_rss_mb": round(model_rss_kb / 1024),
            "peak_rss_mb": round(peak_kb / 1024), "beyond_model_mb": round((peak_kb - model_rss_kb) / 1024), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "scan-scale")
    parser.add_argument("--only", choices=("scan", "fidelity", "encode"), action="append")
    parser.add_argument("--model", help="a model folder (default: the embedded all-MiniLM-L6-v2); only its tokenizer and config are read")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.model)))
        return
    corpus = args.work / f"corpus-{args.texts}.txt"
    if not corpus.exists():
        write_corpus(corpus, args.texts, args.seed)
    print(f"corpus {corpus} ({corpus.stat().st_size:,} bytes); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          file=sys.stderr)
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for what in args.only or ("encode", "scan", "fidelity"):
            model = ["--model", args.model] if args.model else []
            path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            done = subprocess.run([sys.executable, __file__, "--child", what, str(corpus), *model], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": path})
            if done.returncode:
                sys.exit(done.stderr)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps(result), file=sys.stderr)
            results.setdefault(what, []).append(result)
    for what, runs in results.items():
        print(f"{what:9s} {runs[0]['texts']:,} texts, {runs[0]['tokens']:,} tokens: "
              f"median {statistics.median(r['tokens_per_s'] for r in runs):,.0f} tokens/s, "
              f"{statistics.median(r['seconds'] for r in runs):.1f} s wall, "
              f"{statistics.median(r['tokens_per_cpu_s'] for r in runs):,.0f} tokens per CPU-second; peak RSS beyond the model "
              f"{max(r['beyond_model_mb'] for r in runs)} MB (model {runs[0]['model_rss_mb']} MB)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

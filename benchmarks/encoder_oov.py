"""A sentence encoder on text its corpus never had: how close each --oov method's bundle stays to the original model.

    .venv/bin/python benchmarks/encoder_oov.py [--target cpu] [--quantize int8] [--methods ...] [--seeds 0 1 2]

all-MiniLM-L6-v2 (embedded, a sentence-transformers model) is exported as pretrained for an unlabelled corpus
(samples/search_texts.txt, 228 texts) with each method, for one target; each bundle's model and tokenizer then embed
held-out texts of several kinds, one text at a time as an app does: samples/heldout.txt (support chat) and the test
texts of every evaluation set benchmarks/evalsets.py builds (software descriptions, fortunes, Bible verses,
dictionary definitions). Each is compared with the original model (every row, pretrained, fp32, its own
tokenizer): mean and minimum cosine of the sentence vectors, and how often the nearest other held-out text is
the same (what an on-device search over these texts would return first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

METHODS = {
    "full": ["--oov", "unk", "--keep-tokens", "ALL"],
    "unk": ["--oov", "unk"],
    "fallback": ["--oov", "fallback"],
    "remap": ["--oov", "remap"],
    "tail-24": ["--oov", "tail", "--tail-row-bytes", "24"],
    "tail-48": ["--oov", "tail", "--tail-row-bytes", "48"],
    "tail-96": ["--oov", "tail", "--tail-row-bytes", "96"],
    "tail-192": ["--oov", "tail", "--tail-row-bytes", "192"],
    # exact rows also for the tokens of the language's most frequent words (--prior-words), the rest compressed
    "tail-96+prior-2000": ["--oov", "tail", "--tail-row-bytes", "96", "--prior-words", "2000"],
    "tail-96+prior-5000": ["--oov", "tail", "--tail-row-bytes", "96", "--prior-words", "5000"],
    "tail-48+prior-5000": ["--oov", "tail", "--tail-row-bytes", "48", "--prior-words", "5000"],
    "default": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--corpus", default=str(REPO / "samples" / "search_texts.txt"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--texts-per-set", type=int, default=200, help="held-out texts per set (the first N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--seed of each export (the tail's k-means); "
                        "the table gives the median over seeds and, with several, the range")
    args = parser.parse_args()

    from evalsets import build_all
    from pema_export.models import resolve_model
    from pema_export.oov.heldout import compare_vectors, full_vocabulary_vectors

    sets = {"support chat (samples/heldout.txt)": REPO / "samples" / "heldout.txt"}
    sets.update({f"{name} (evalsets)": test for name, (_, test) in build_all(REPO / "build" / "evalsets").items()})
    texts = {name: [line.split("\t", 1)[-1] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][: args.texts_per_set]
             for name, path in sets.items()}
    source = resolve_model(None)
    full = {name: full_vocabulary_vectors(source, batch, 128) for name, batch in texts.items()}
    exe = str(Path(sys.executable).parent / "pema-export")
    rows = []
    with tempfile.TemporaryDirectory(prefix="pema-encoder-") as scratch:
        everything = Path(scratch) / "all-tokens.txt"
        vocab = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
        everything.write_text("".join(token + "\n" for token in sorted(vocab, key=vocab.get)), encoding="utf-8")
        for method in args.methods:
            for seed in args.seeds:
                out = Path(scratch) / f"{method}-seed{seed}" / "model.onnx"
                options = [str(everything) if option == "ALL" else option for option in METHODS[method]]
                subprocess.run([exe, "--corpus", args.corpus, "--target", args.target, "--quantize", args.quantize, "--out", str(out),
                                "--seed", str(seed), "--quiet", *options], check=True, capture_output=True, text=True)
                manifest = json.loads((out.parent / "pema-manifest.json").read_text(encoding="utf-8"))
                row = {"method": method, "seed": seed, "oov": manifest["vocab"]["oov"], "kept": manifest["vocab"]["kept"],
                       "bundle_bytes": sum(f.stat().st_size for f in out.parent.rglob("*")
                                                          if f.is_file() and f.name != "pema-timings.json"), "sets": {}}
                for name, batch in texts.items():
                    cosines, agreement = compare_vectors(embed(out, batch), full[name])
                    row["sets"][name] = {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()),
                                         "neighbour_agreement": agreement}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    full_bytes = next((r["bundle_bytes"] for r in rows if r["method"] == "full"), None)
    print(f"all-MiniLM-L6-v2 as a sentence encoder, corpus {Path(args.corpus).name}, target {args.target} "
          f"--quantize {args.quantize}, seeds {' '.join(map(str, args.seeds))}; per held-out set: mean cosine to the "
          "original model / nearest-neighbour agreement (medians over seeds; with several, the cosine's range)")
    print("| method | kept rows | bundle bytes | × full | " + " | ".join(texts) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(texts))
    for method in args.methods:
        runs = [row for row in rows if row["method"] == method]
        size = statistics.median(row["bundle_bytes"] for row in runs)
        ratio = f"{size / full_bytes:.2f}" if full_bytes else "?"
        cells = []
        for name in texts:
            cosines = [row["sets"][name]["cosine_mean"] for row in runs]
            spread = f" ({min(cosines):.4f}-{max(cosines):.4f})" if len(runs) > 1 else ""
            agreement = statistics.median(row["sets"][name]["neighbour_agreement"] for row in runs)
            cells.append(f"{statistics.median(cosines):.4f}{spread} / {agreement:.0%}")
        print(f"| {method} ({runs[0]['oov']}) | {runs[0]['kept']:,} | {size:,.0f} | {ratio} | {' | '.join(cells)} |")
    print(json.dumps(rows))


def embed(model: Path, texts: list[str]) -> np.ndarray:
    """The bundle's sentence vectors, its own tokenizer, one text at a time."""
    import onnxruntime as ort

    from pema_export.vocab import open_tokenizer

    tokenizer = open_tokenizer(model.parent / "tokenizer.json")
    tokenizer.enable_truncation(128)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    vectors = []
    for encoding in tokenizer.encode_batch(texts):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        vectors.append(session.run(["sentence_embedding"], {k: v for k, v in feeds.items() if k in inputs})[0][0])
    return np.asarray(vectors, dtype=np.float64)


if __name__ == "__main__":
    main()

"""Bundle size: the same fine-tuned model exported plainly with optimum (full vocabulary) vs with pema-export.

    .venv/bin/python benchmarks/size_vs_plain.py [--corpus samples/app_texts.txt]

pema-export fine-tunes with the partial embedding and also writes the merged full-vocabulary checkpoint
(--save-full); optimum then exports that checkpoint as it is, so both sides hold the same trained weights.
Prints one row per bundle and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pema_export.size import bundle_report  # noqa: E402


def pema_export(*args: str) -> None:
    exe = Path(sys.executable).parent / "pema-export"
    subprocess.run([str(exe), *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(REPO / "samples" / "app_texts.txt"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pema-bench-") as scratch:
        scratch = Path(scratch)
        # the CLI's own training defaults on both; same seed, so both runs train the same model
        pema_export("--corpus", args.corpus, "--out", str(scratch / "pema-fp32" / "model.onnx"), "--quantize", "none",
                    "--save-full", str(scratch / "full"))
        pema_export("--corpus", args.corpus, "--out", str(scratch / "pema-cpu" / "model.onnx"))

        from optimum.exporters.onnx import main_export

        main_export(str(scratch / "full"), output=str(scratch / "plain"), task="text-classification",
                    library_name="transformers", do_validation=False)
        rows = {}
        for name, folder, model in [
            ("optimum fp32, full vocabulary", scratch / "plain", "model.onnx"),
            ("pema-export --quantize none", scratch / "pema-fp32", "model.onnx"),
            ("pema-export --target cpu (int8)", scratch / "pema-cpu", "model.onnx"),
        ]:
            report = bundle_report(folder)
            entry = next(f for f in report.files if f.name == model)
            rows[name] = {"model_bytes": entry.size_bytes, "model_deflate_bytes": entry.deflate_bytes,
                          "bundle_bytes": report.total_bytes}
        manifest = json.loads((scratch / "pema-fp32" / "pema-manifest.json").read_text())
    plain = rows["optimum fp32, full vocabulary"]["model_bytes"]
    print(f"corpus {args.corpus}: vocabulary {manifest['vocab']['kept']:,} of {manifest['vocab']['original']:,} tokens kept")
    print(f"{'export':34s} {'model bytes':>14s} {'deflated':>14s} {'ratio':>7s}")
    for name, row in rows.items():
        print(f"{name:34s} {row['model_bytes']:>14,} {row['model_deflate_bytes']:>14,} {row['model_bytes'] / plain:>7.3f}")
    print(json.dumps({"plain_bytes": plain, **{k: v["model_bytes"] for k, v in rows.items()},
                      "ratio_fp32": rows["pema-export --quantize none"]["model_bytes"] / plain,
                      "ratio_cpu": rows["pema-export --target cpu (int8)"]["model_bytes"] / plain}))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The GPU check (issue 12), for anyone with a CUDA GPU. Needs no network.
#
#   benchmarks/gpu_check.sh [OUT_DIR]            # default OUT_DIR: build/gpu-check
#
# 1. a full export of samples/app_texts.txt fine-tuned on the GPU, in fp32 and in bf16 (held-out figures on
#    samples/heldout.txt), each verified on the CPU as always;
# 2. benchmarks/finetune_memory.py --device cuda --repeats 1: peak CUDA memory of full-vocabulary vs PEMA
#    fine-tuning, MiniLM and the XLM-R-base-shaped model;
# 3. one JSON line, the last line printed: the GPU, peak CUDA MB full vs PEMA, accuracies and wall times (the
#    exports' training and post-training seconds from pema-timings.json).
# Without a GPU it stops at once with one line on stderr and exit code 2.
#
# Where pema-export is installed (make setup, with a CUDA build of torch) nothing else is needed. On a machine whose
# python3 has torch with CUDA but not pema-export's pinned dependencies (this workplace's H200 machine: torch 2.11,
# transformers 5, no optimum, no network, 64 MiB carried per call), prepare a folder once where pip works:
#
#   benchmarks/gpu_check.sh --prepare .gpu-carry   # wheels for Python 3.12 + all-MiniLM-L6-v2 as fp16 (~62 MB)
#
# then carry it and run there: PEMA_CARRY=.gpu-carry benchmarks/gpu_check.sh
# (its wheels are installed with pip install --no-deps --target, its model is passed as --model; fp16 weights are
# read into fp32, so training is fp32 as with the original file).
#
# Environment: PYTHON (default python3), PEMA_CARRY (above), PEMA_MODEL (a model folder; default the embedded
# all-MiniLM-L6-v2 or PEMA_CARRY's), PEMA_SKIP_XLMR=1 (MiniLM only), PEMA_DEVICE (default cuda; cpu for a smoke
# run of this script), PEMA_EPOCHS (the exports' epochs, default 5 as pema-export's).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

# Versions pema-export is tested with (constraints.txt) that such a machine lacks or has in another version.
CARRIED_WHEELS="transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0"

if [ "${1:-}" = "--prepare" ]; then
    carry="${2:?usage: gpu_check.sh --prepare DIR}"
    mkdir -p "$carry/wheels"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$carry/wheels" $CARRIED_WHEELS
    PYTHONPATH="$REPO" "$PYTHON" - "$carry/minilm-fp16" <<'EOF'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from pema_export.models import resolve_model

source, target = resolve_model(None).path, Path(sys.argv[1])
shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx", "onnx"))
weights = load_file(source / "model.safetensors")
save_file({name: tensor.half() for name, tensor in weights.items()}, target / "model.safetensors", metadata={"format": "pt"})
EOF
    du -sh "$carry"
    exit 0
fi

OUT="${1:-build/gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -n "${PEMA_CARRY:-}" ]; then
    site="$OUT/site"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$PEMA_CARRY"/wheels/*.whl
    export PYTHONPATH="$REPO:$site"
    PEMA_MODEL="${PEMA_MODEL:-$(cd "$PEMA_CARRY/minilm-fp16" && pwd)}"
fi
DEVICE="${PEMA_DEVICE:-cuda}"

"$PYTHON" - "$DEVICE" <<'EOF' || exit 2
import sys
import torch
if sys.argv[1].startswith("cuda") and not torch.cuda.is_available():
    why = "a build without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
    sys.exit(f"gpu_check: no GPU to check: torch {torch.__version__}, {why}")
EOF

model_args=()
[ -n "${PEMA_MODEL:-}" ] && model_args=(--model "$PEMA_MODEL")
for precision in fp32 bf16; do
    rm -rf "$OUT/export-$precision"
    started=$(date +%s.%N)
    "$PYTHON" -m pema_export ${model_args[@]+"${model_args[@]}"} --corpus samples/app_texts.txt --eval samples/heldout.txt \
        --out "$OUT/export-$precision/model.onnx" --device "$DEVICE" --precision "$precision" --epochs "${PEMA_EPOCHS:-5}" 2> "$OUT/export-$precision.log" \
        || { tail -n 20 "$OUT/export-$precision.log" >&2; echo "gpu_check: the $precision export failed (log: $OUT/export-$precision.log)" >&2; exit 1; }
    echo "$started $(date +%s.%N)" > "$OUT/export-$precision.seconds"
done

memory_args=(--device "$DEVICE" --repeats 1)
[ -n "${PEMA_MODEL:-}" ] && memory_args+=(--minilm "$PEMA_MODEL")
[ "${PEMA_SKIP_XLMR:-}" = "1" ] && memory_args+=(--skip-xlmr)
"$PYTHON" benchmarks/finetune_memory.py "${memory_args[@]}" | tee "$OUT/finetune_memory.log"

"$PYTHON" - "$OUT" "$DEVICE" <<'EOF'
import datetime, json, sys
from pathlib import Path
import torch

out, device = Path(sys.argv[1]), sys.argv[2]
result = {"check": "gpu_check", "date": datetime.date.today().isoformat(), "device": device,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
          "torch": torch.__version__, "cuda": torch.version.cuda}
for precision in ("fp32", "bf16"):
    manifest = json.loads((out / f"export-{precision}" / "pema-manifest.json").read_text())
    started, ended = map(float, (out / f"export-{precision}.seconds").read_text().split())
    training, heldout, parity = manifest["training"], manifest["heldout"], manifest["parity"]
    result[f"export_{precision}"] = {
        "verified": True, "seconds": round(ended - started, 1), "trained_on": training["device"],
        "precision": training["precision"], "eval_accuracy": training["eval_accuracy"],
        "heldout_accuracy_shipped": heldout["accuracy"], "parity_max_abs_diff": parity["max_abs_diff"],
        "model_bytes": manifest["files"]["model.onnx"]["bytes"],
    }
    timings = json.loads((out / f"export-{precision}" / "pema-timings.json").read_text())
    result[f"export_{precision}"].update(train_seconds=timings["seconds"]["train"], post_training_seconds=timings["post_training_seconds"],
                                         post_training_to_training=timings["post_training_to_training"], cpu_count=timings["cpu_count"])
memory = json.loads((out / "finetune_memory.log").read_text().strip().splitlines()[-1])
keys = ("peak_cuda_mb_full", "peak_cuda_mb_pema", "peak_cuda_ratio", "acc_full", "acc_pema", "seconds_full", "seconds_pema")
result["minilm"] = {key: memory.get(key) for key in keys}
if "xlmr_peak_cuda_mb_full" in memory:
    result["xlmr"] = {key: memory.get(f"xlmr_{key}") for key in keys if not key.startswith("acc")}
print(json.dumps(result))
EOF

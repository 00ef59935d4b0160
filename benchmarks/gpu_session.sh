#!/usr/bin/env bash
# Everything a GPU machine should check, in one call of at most ~9 minutes (this workplace lends one for 15 minutes a
# session): benchmarks/gpu_check.sh, pytest -m gpu, and the 1,000,000-text scan on the machine's cores.
#
#   benchmarks/gpu_check.sh --prepare .gpu-carry     # here, where pip works (~60 MiB: wheels + MiniLM in fp16)
#   bash benchmarks/gpu_session.sh                   # there, with .gpu-carry carried; results in $OUT (8 files)
#
# Smoke test without a GPU: PATH=$PWD/.venv/bin:$PATH OUT=/tmp/out SCAN_TEXTS=5000 bash benchmarks/gpu_session.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
O="${OUT:-/tmp/out}"; W=/tmp/gpu-check; mkdir -p "$O" "$W"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; echo "cores $(nproc)"
  python3 -c "import sys, torch, numpy, onnxruntime; print(sys.version.split()[0], torch.__version__, torch.version.cuda, numpy.__version__, onnxruntime.__version__)"; } > "$O/machine.txt" 2>&1
PEMA_CARRY=.gpu-carry timeout "${CHECK_LIMIT:-330}" benchmarks/gpu_check.sh "$W" > "$O/gpu_check.log" 2>&1
echo "gpu_check rc=$? at $(elapsed) s" >> "$O/machine.txt"
tail -n 1 "$O/gpu_check.log" > "$O/gpu_check.json"
for p in fp32 bf16; do cp "$W/export-$p/pema-manifest.json" "$O/manifest-$p.json" 2>/dev/null; done
export PYTHONPATH="$PWD:$W/site"
timeout 150 python3 -m pytest -m gpu tests/test_devices.py -q -p no:cacheprovider -ra > "$O/pytest_gpu.log" 2>&1
echo "pytest -m gpu rc=$? at $(elapsed) s" >> "$O/machine.txt"
if [ "$(elapsed)" -lt "${SCAN_BEFORE:-400}" ]; then
    timeout 150 python3 benchmarks/scan_scale.py --texts "${SCAN_TEXTS:-1000000}" --model .gpu-carry/minilm-fp16 --work /tmp/scan --only encode --only scan --only fidelity > "$O/scan_scale.log" 2>&1
    echo "scan_scale rc=$? at $(elapsed) s" >> "$O/machine.txt"
fi
cat "$O/machine.txt"; tail -n 3 "$O/pytest_gpu.log"; cat "$O/gpu_check.json"

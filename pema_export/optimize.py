"""onnxruntime's transformer graph optimizer: fuse attention, LayerNorm, GELU and the embedding into contrib ops.

Only the Python fusions run (``opt_level=0``): they are deterministic and independent of the machine exporting,
while onnxruntime's own graph optimizations run anyway when the app creates its session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pema_export.quantize import quiet_onnxruntime_logs

# config.json model_type -> onnxruntime.transformers optimizer model_type. The BERT fusions match the
# encoder graphs of these families (the optimizer's docs and benchmarks use "bert" for all of them).
FUSION_MODEL_TYPES = {
    "bert": "bert",
    "distilbert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "camembert": "bert",
}


@dataclass(frozen=True)
class OptimizeReport:
    applied: bool
    optimizer_model_type: str | None
    fused: dict[str, int]  # fused op -> count; empty when nothing matched
    reason: str = ""

    def as_manifest(self) -> dict:
        entry = {"applied": self.applied, "optimizer_model_type": self.optimizer_model_type, "fused": self.fused}
        if self.reason:
            entry["reason"] = self.reason
        return entry


def optimize_onnx(src: Path, dst: Path, model_type: str, num_heads: int, hidden_size: int) -> OptimizeReport:
    """Write the fused graph of ``src`` to ``dst``; an architecture without fusions is copied unchanged and says so."""
    optimizer_type = FUSION_MODEL_TYPES.get(model_type)
    if optimizer_type is None:
        dst.write_bytes(src.read_bytes())
        return OptimizeReport(False, None, {}, f"onnxruntime has no transformer fusions for model_type {model_type!r}")
    from onnxruntime.transformers.optimizer import optimize_model

    # it warns, e.g., that our producer name is not "pytorch" (the model_type is given) or that a pruned
    # vocabulary is smaller than the position table: true, and no reason to alarm the user
    with quiet_onnxruntime_logs():
        optimized = optimize_model(
            str(src), model_type=optimizer_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
        fused = {op: n for op, n in sorted(optimized.get_fused_operator_statistics().items()) if n}
    optimized.model.producer_name = "pema-export"
    # save_model_to_file also declares the com.microsoft opset the fused nodes need
    optimized.save_model_to_file(str(dst))
    return OptimizeReport(bool(fused), optimizer_type, fused, "" if fused else "no fusion pattern matched this graph")

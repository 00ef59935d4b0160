"""onnxruntime's transformer graph optimizer: fuse attention, LayerNorm, GELU and the embedding into contrib ops.

Only the Python fusions run (``opt_level=0``): they are deterministic and independent of the machine exporting,
while onnxruntime's own graph optimizations run anyway when the app creates its session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pema_export.stages import GraphEstimate, ModelFile, ShipContext
from pema_export.stages.quantize import quiet_onnxruntime_logs

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
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    # the optimizer's symbolic shape inference fails on the appended pooling and then fuses no attention at all
    # (all-MiniLM-L6-v2 as an encoder: BiasGelu and LayerNormalization only); fuse the encoder, then re-attach
    pooling = detach_pooling(model)
    # it warns, e.g., that our producer name is not "pytorch" (the model_type is given) or that a pruned
    # vocabulary is smaller than the position table: true, and no reason to alarm the user
    with quiet_onnxruntime_logs():
        optimized = optimize_model(
            model, model_type=optimizer_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
        fused = {op: n for op, n in sorted(optimized.get_fused_operator_statistics().items()) if n}
    optimized.model.producer_name = "pema-export"
    if pooling is not None:
        attach_pooling(optimized.model, pooling)
    # save_model_to_file also declares the com.microsoft opset the fused nodes need
    optimized.save_model_to_file(str(dst))
    return OptimizeReport(bool(fused), optimizer_type, fused, "" if fused else "no fusion pattern matched this graph")


def detach_pooling(model) -> tuple[list, list, list] | None:
    """Remove the sentence pooling (pooling.py) from ``model`` in place: (nodes, initializers, outputs), or None."""
    from pema_export.pooling import POOL_NODE_PREFIX

    nodes = [node for node in model.graph.node if node.name.startswith(POOL_NODE_PREFIX)]
    if not nodes:
        return None
    produced = {name for node in nodes for name in node.output}
    read = {name for node in nodes for name in node.input}
    others_read = {name for node in model.graph.node if node not in nodes for name in node.input}
    initializers = [t for t in model.graph.initializer if t.name in read and t.name not in others_read]
    outputs = [o for o in model.graph.output if o.name in produced]
    for node in nodes:
        model.graph.node.remove(node)
    for tensor in initializers:
        model.graph.initializer.remove(tensor)
    for output in outputs:
        model.graph.output.remove(output)
    return nodes, initializers, outputs


def attach_pooling(model, pooling: tuple[list, list, list]) -> None:
    nodes, initializers, outputs = pooling
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    model.graph.output.extend(outputs)


class Optimize:
    """onnxruntime's transformer fusions, where the profile asks for them (``optimize = true``)."""

    name = "optimize"
    order = 10

    def applies(self, target) -> bool:
        return target.optimize

    def label(self, target) -> str:
        return self.name

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]:
        from pema_export.verify import check_stage

        (model,) = models  # the first stage: the exported model alone
        optimized = ctx.work / "optimized.onnx"
        report = optimize_onnx(model.path, optimized, ctx.shape.model_type, ctx.shape.num_heads, ctx.shape.hidden_size)
        check = check_stage("optimize", optimized, model.reference, model.precision)
        ctx.log(f"optimize: fused {report.fused or 'nothing'}; max |diff| vs fp32 {check.max_abs_diff:.2e}")
        ctx.shipped.stages.append({"stage": "optimize", **report.as_manifest(), "check": check.as_manifest()})
        return [replace(model, path=optimized)]

    def predict(self, graphs: list[GraphEstimate], target, model_type: str) -> list[GraphEstimate]:
        return [replace(graph, fused=model_type in FUSION_MODEL_TYPES) for graph in graphs]


STAGE = Optimize()

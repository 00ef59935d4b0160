"""From the verified fp32 ONNX to exactly the files a target ships: optimize -> quantize -> convert.

Each stage is a function from a model file to a model file (optimize.py, quantize.py, ort_format.py), and each is
followed by its check against the fp32 ONNX on the same corpus sample (verify.check_stage); a stage that misses its
bound stops the export, naming the stage. What lands in the bundle per format:

- onnx:            ``--out`` itself (e.g. model.onnx), the last stage's model.
- ort:             ``--out`` with the suffix .ort (DIR/model.onnx -> DIR/model.ort) and required_operators_and_types.config.
- transformers.js: ``DIR/onnx/model.onnx`` (fp32) and the quantized variant transformers.js looks for by dtype:
                   onnx/model_quantized.onnx (dtype "q8") or onnx/model_fp16.onnx (dtype "fp16").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pema_export.bundle import StagedBundle
from pema_export.errors import OutputError
from pema_export.optimize import optimize_onnx
from pema_export.ort_format import convert_to_ort, mobile_usability, ort_embedding_bytes
from pema_export.profiles import Target
from pema_export.quantize import embedding_bytes, quantize_model
from pema_export.verify import OnnxReference, check_stage

# transformers.js picks the file by the dtype the app asks for
WEB_MODEL = "onnx/model.onnx"
WEB_VARIANTS = {"int8": "onnx/model_quantized.onnx", "fp16": "onnx/model_fp16.onnx"}


@dataclass(frozen=True)
class ModelShape:
    """What the stages need to know about the architecture (from the exported model's config)."""

    model_type: str
    num_heads: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        return cls(config.model_type, config.num_attention_heads, config.hidden_size, config.vocab_size)


@dataclass
class Shipped:
    """The manifest's record of the stages and of what the bundle's model file(s) are."""

    stages: list[dict] = field(default_factory=list)
    embedding_bytes: dict[str, dict] = field(default_factory=dict)
    mobile: dict | None = None

    def manifest_fields(self) -> dict:
        fields = {"stages": self.stages, "embedding_bytes": self.embedding_bytes}
        if self.mobile is not None:
            fields["mobile"] = self.mobile
        return fields


def check_target_output(target: Target, out: Path) -> None:
    """How ``--out`` maps to the shipped files for this target; refuse a name the target's client cannot load."""
    if target.format == "transformers.js" and out.name != "model.onnx":
        raise OutputError(
            f"--out {out}: the {target.name} target writes the transformers.js layout, whose model is onnx/model.onnx; "
            f"pass --out {out.parent / 'model.onnx'}"
        )


def shipped_model_name(target: Target, out: Path) -> str:
    """The bundle-relative name of the model file the app loads (the fp32 one for transformers.js)."""
    if target.format == "ort":
        return out.with_suffix(".ort").name
    if target.format == "transformers.js":
        return WEB_MODEL
    return out.name


def ship(
    target: Target,
    fp32: Path,
    shape: ModelShape,
    reference: OnnxReference,
    staged: StagedBundle,
    out: Path,
    work: Path,
    log: Callable[[str], None] = lambda message: None,
    graph_stages: tuple = (),
) -> Shipped:
    """Run the target's stages on ``fp32`` (scratch files in ``work``), verify each, and stage the shipped files.

    ``graph_stages`` (an OOV policy's, e.g. remap's id table) go into each model as it is placed, after its own
    check on pruned ids; for the ORT format before conversion, so the .ort file carries them and its check runs on
    the ids they take."""
    shipped = Shipped()
    fp32_embedding = embedding_bytes(fp32, shape.vocab_size)
    shipped.stages.append({"stage": "export", "precision": "fp32", "embedding": fp32_embedding.as_manifest()})
    shipped.embedding_bytes["fp32"] = {"dtype": fp32_embedding.dtype, "bytes": fp32_embedding.bytes}
    current, precision = fp32, "fp32"

    if target.optimize:
        optimized = work / "optimized.onnx"
        report = optimize_onnx(current, optimized, shape.model_type, shape.num_heads, shape.hidden_size)
        check = check_stage("optimize", optimized, reference, precision)
        log(f"optimize: fused {report.fused or 'nothing'}; max |diff| vs fp32 {check.max_abs_diff:.2e}")
        shipped.stages.append({"stage": "optimize", **report.as_manifest(), "check": check.as_manifest()})
        current = optimized

    if target.format == "transformers.js":
        _place(current, staged, WEB_MODEL)
        for stage in graph_stages:
            stage.apply(staged.path(WEB_MODEL), WEB_MODEL, reference, work)
        shipped.embedding_bytes[WEB_MODEL] = shipped.embedding_bytes["fp32"]

    if target.quantize != "none":
        name = WEB_VARIANTS[target.quantize] if target.format == "transformers.js" else None
        quantized = staged.path(name) if name else work / f"{target.quantize}.onnx"
        quantized.parent.mkdir(parents=True, exist_ok=True)
        report = quantize_model(current, quantized, target.quantize, shape.vocab_size)
        precision = target.quantize
        check = check_stage(f"quantize {precision}", quantized, reference, precision)
        log(f"quantize {precision}: embedding {report.embedding.bytes:,} bytes ({report.embedding.dtype}); {_figures(check)}")
        shipped.stages.append({"stage": f"quantize {precision}", **report.as_manifest(), "check": check.as_manifest()})
        if name:
            shipped.embedding_bytes[name] = {"dtype": report.embedding.dtype, "bytes": report.embedding.bytes}
            for stage in graph_stages:
                stage.apply(quantized, name, reference, work)
        current = quantized

    if target.format == "ort":
        ort_name = shipped_model_name(target, out)
        for stage in graph_stages:
            remapped = work / "remapped.onnx"
            shutil.copyfile(current, remapped)
            reference = stage.apply(remapped, ort_name, reference, work)
            current = remapped
        shipped.mobile = {"usability": mobile_usability(current, target.guidance)}
        ort_path = staged.path(ort_name)
        conversion = convert_to_ort(current, ort_path, target.ort_optimization_style, target.ort_target_platform)
        check = check_stage("convert to ORT", ort_path, reference, precision)
        log(f"convert to ORT ({target.ort_optimization_style}, {target.ort_target_platform}): {_figures(check)}")
        shipped.stages.append({"stage": "convert to ORT", **conversion.as_manifest(), "check": check.as_manifest()})
        dtype, size = ort_embedding_bytes(ort_path, shape.vocab_size)
        shipped.embedding_bytes[ort_path.name] = {"dtype": dtype, "bytes": size}
    elif target.format == "onnx":
        _place(current, staged, out.name)
        for stage in graph_stages:
            stage.apply(staged.path(out.name), out.name, reference, work)
        final = embedding_bytes(staged.path(out.name), shape.vocab_size)
        shipped.embedding_bytes[out.name] = {"dtype": final.dtype, "bytes": final.bytes}
    return shipped


def _place(model: Path, staged: StagedBundle, name: str) -> None:
    target = staged.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, target)


def _figures(check) -> str:
    if check.top1_agreement is not None:
        return f"top-1 agreement with fp32 {check.top1_agreement:.2%} on {check.texts_checked} texts"
    if check.min_cosine is not None:
        return f"min cosine to fp32 {check.min_cosine:.4f} on {check.texts_checked} texts"
    return f"max |diff| vs fp32 {check.max_abs_diff:.2e} on {check.texts_checked} texts"

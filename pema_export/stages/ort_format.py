"""Convert an ONNX model to the ORT format for ONNX Runtime Mobile, and explain how it fits the mobile EPs.

The conversion is onnxruntime's own tool (``python -m onnxruntime.tools.convert_onnx_models_to_ort``); it also
writes ``required_operators_and_types.config``, the operator list a reduced ONNX Runtime build is compiled with.
The usability report is ``onnxruntime.tools.check_onnx_model_mobile_usability``'s output, kept verbatim.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from pema_export.errors import VerificationError
from pema_export.stages import GraphEstimate, ModelFile, ShipContext, checked_figures
from pema_export.stages.formats import format_of

OPERATORS_CONFIG = "required_operators_and_types.config"
_ADDR_NO_RANDOMIZE = 0x0040000  # linux/personality.h
# the closing advice check_onnx_model_mobile_usability prints, in its words
_RECOMMEND_CPU = "For optimal performance the model should be used with the CPU EP."
_RECOMMEND_EPS = (
    "As NNAPI or CoreML may provide benefits with this model it is recommended to compare the performance of the "
    "model using the NNAPI EP on Android, and the CoreML EP on iOS, against the performance using the CPU EP."
)

IN_GRAPH_TOKENIZER_NOTE = (
    "the report covers the model behind the in-graph tokenizer; the tokenizer's nodes (ai.onnx.contrib ops in a "
    "Loop) run on the CPU EP and need onnxruntime-extensions registered in the app's session options"
)

# onnxruntime's checker names each EP's op list by the file it reads
_EP_CHECKS = {
    "nnapi": (("NNAPI", None),),
    "coreml": (("CoreML MLProgram", "coreml_supported_mlprogram_ops.md"), ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md")),
}


@dataclass(frozen=True)
class OrtConversion:
    ort_path: Path
    config_path: Path
    optimization_style: str
    target_platform: str
    layout_pinned: bool  # False: the .ort bytes may differ between runs (same graph, different flatbuffer layout)

    def as_manifest(self) -> dict:
        return {
            "tool": "onnxruntime.tools.convert_onnx_models_to_ort",
            "optimization_style": self.optimization_style,
            "optimization_level": "all",
            "target_platform": self.target_platform,
            "operators_config": self.config_path.name,
            "byte_deterministic": self.layout_pinned,
        }


def convert_to_ort(src: Path, dst: Path, optimization_style: str, target_platform: str, custom_op_library: str | None = None) -> OrtConversion:
    """Write ``dst`` (.ort) and ``required_operators_and_types.config`` beside it; raise naming the stage on failure.

    ``custom_op_library``: the shared library of a model's custom ops (onnxruntime-extensions' for a string-in
    model); the config then lists their domain too, which a reduced build must include."""
    with tempfile.TemporaryDirectory(prefix="pema-ort-") as scratch:
        out_dir = Path(scratch)
        env = {k: v for k, v in os.environ.items() if k != "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"}
        command = [
            sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
            # the model path goes before --optimization_style, which takes several values
            str(src),
            "--output_dir", str(out_dir),
            "--optimization_style", optimization_style,
            "--target_platform", target_platform,
            "--enable_type_reduction",
        ] + (["--custom_op_library", custom_op_library] if custom_op_library else [])
        pinned = sys.platform.startswith("linux")
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, preexec_fn=_pin_layout if pinned else None)
        except subprocess.SubprocessError:  # the sandbox refused personality(2): convert anyway, and say so
            pinned = False
            result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise VerificationError(f"stage 'convert to ORT' failed: {last}")
        written_ort = next(out_dir.glob("*.ort"))
        written_config = next(out_dir.glob(f"*{OPERATORS_CONFIG}"))
        os.replace(written_ort, dst)
        config_path = dst.parent / OPERATORS_CONFIG
        # the tool writes the absolute path of the scratch model into the config; keep artifacts free of it
        text = written_config.read_text(encoding="utf-8").replace(str(written_ort), dst.name)
        config_path.write_text(text, encoding="utf-8")
    return OrtConversion(dst, config_path, optimization_style, target_platform, pinned)


def _pin_layout() -> None:
    """In the converter's process, before exec: no address randomisation. onnxruntime seeds its hash maps with an
    address, and the order it writes flatbuffer tables follows them: with ASLR the same graph gets a different
    byte layout on every run; without, the .ort is byte-identical for the same input."""
    current = _personality(0xFFFFFFFF)
    if current == -1 or _personality(current | _ADDR_NO_RANDOMIZE) == -1:
        raise OSError("personality(ADDR_NO_RANDOMIZE) refused")


def _personality(value: int) -> int:
    try:
        return ctypes.CDLL(None, use_errno=True).personality(ctypes.c_ulong(value))
    except (OSError, AttributeError):
        return -1


def mobile_usability(model_path: Path, guidance: tuple[str, ...]) -> dict:
    """check_onnx_model_mobile_usability's report for ``model_path`` (the ONNX model that is converted), plus, for
    each EP in ``guidance``, how the graph would partition, as numbers an app developer can act on."""
    from onnxruntime.tools.mobile_helpers import usability_checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage().replace(str(basic), model_path.name)
            lines.extend(line.rstrip() for line in message.splitlines())

    logger = logging.getLogger("pema_export.mobile_usability")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Collect()
    logger.addHandler(handler)
    try:
        with tempfile.TemporaryDirectory(prefix="pema-usability-") as scratch:
            # the checker looks at the graph after basic optimizations, as the ORT conversion produces them
            basic = Path(scratch) / model_path.name
            optimize_model(model_path, basic, use_external_initializers=True)
            try_eps = usability_checker.analyze_model(basic, skip_optimize=True, logger=logger)
            shaped = ModelProtoWithShapeInfo(basic).model_with_shape_info
            partitions = {}
            for ep in guidance:
                for ep_name, ops_file in _EP_CHECKS[ep]:
                    partitions[ep_name] = {
                        "as_exported": _partitioning(usability_checker, shaped, ep, ops_file, fixed_shapes_required=True),
                        "with_fixed_input_shapes": _partitioning(usability_checker, shaped, ep, ops_file, fixed_shapes_required=False),
                    }
    finally:
        logger.removeHandler(handler)
    return {
        "tool": "onnxruntime.tools.check_onnx_model_mobile_usability",
        "checked": model_path.name,
        "nnapi_or_coreml_may_help": bool(try_eps),
        "recommendation": _RECOMMEND_EPS if try_eps else _RECOMMEND_CPU,
        "partitions": partitions,
        "report": [line for line in lines if line],
    }


def _partitioning(checker, shaped, ep: str, ops_file: str | None, fixed_shapes_required: bool) -> dict:
    if ep == "nnapi":
        info = checker.check_nnapi_partitions(shaped, require_fixed_input_sizes=fixed_shapes_required)
    else:
        info = checker.check_coreml_partitions(shaped, fixed_shapes_required, ops_file)
    return {
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
        "unsupported_due_to_dynamic_shapes": info.nodes_unsupported_due_to_dynamic_input,
        "verdict": info.suitability().name,  # YES / MAYBE / NO: worth trying the EP, as onnxruntime judges it
    }


def ort_embedding_bytes(ort_path: Path, vocab_size: int) -> tuple[str, int]:
    """(dtype, bytes) of the input-embedding table(s) as stored in the .ort file: rank-2 initializers with
    ``vocab_size`` rows, read from the flatbuffer without loading a session."""
    from onnx import helper
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buffer = ort_path.read_bytes()
    graph = InferenceSession.InferenceSession.GetRootAs(buffer, 0).Model().Graph()
    dtypes, total = set(), 0
    for i in range(graph.InitializersLength()):
        tensor = graph.Initializers(i)
        if tensor.DimsLength() == 2 and tensor.Dims(0) == vocab_size:
            dtypes.add(helper.tensor_dtype_to_np_dtype(tensor.DataType()).name)
            total += tensor.RawDataLength()
    return "/".join(sorted(dtypes)) or "none", total


class ConvertToOrt:
    """The ORT format's own stage: each model file becomes an .ort file with its operator config beside it."""

    name = "convert to ORT"
    order = 40

    def applies(self, target) -> bool:
        return format_of(target).file_kind == "ort"

    def label(self, target) -> str:
        return self.name

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]:
        from pema_export.verify import check_stage

        converted = []
        style, platform = ctx.target.ort_optimization_style, ctx.target.ort_target_platform
        for model in models:
            text_input = model.text_input
            # the EPs' report is about the transformer: the tokenizer's nodes are custom ops the CPU EP runs
            checked = text_input.ids_model if text_input else model.path
            ctx.shipped.mobile = {"usability": mobile_usability(checked, ctx.target.guidance)}
            if text_input:
                ctx.shipped.mobile["in_graph_tokenizer"] = IN_GRAPH_TOKENIZER_NOTE
            ort_path = ctx.work / ctx.shipped_name(model)
            conversion = convert_to_ort(model.path, ort_path, style, platform,
                                        custom_op_library=text_input.custom_op_library if text_input else None)
            check = check_stage(self.name, ort_path, model.reference, model.precision, text_input=text_input is not None)
            ctx.log(f"convert to ORT ({style}, {platform}): {checked_figures(check)}")
            custom_ops = {"custom_op_library": "onnxruntime-extensions"} if text_input else {}
            ctx.shipped.stages.append({"stage": self.name, **conversion.as_manifest(), **custom_ops, "check": check.as_manifest()})
            converted.append(replace(model, path=ort_path, kind="ort", beside=(conversion.config_path,)))
        return converted

    def predict(self, graphs: list[GraphEstimate], target, model_type: str) -> list[GraphEstimate]:
        return [replace(graph, kind="ort") for graph in graphs]


STAGE = ConvertToOrt()

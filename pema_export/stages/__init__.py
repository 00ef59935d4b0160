"""From the verified fp32 ONNX to exactly the files a target ships: one module per transformation, in order.

optimize.py (onnxruntime's transformer fusions), quantize.py (int8 or fp16), id_table.py (an OOV policy's graph
stage: remap's id table), string_input.py (``--tokenizer in-graph``: the tokenizer in front of the model) and
ort_format.py (conversion to the ORT format). Every stage says whether it
``applies(target)``, ``run``s on the model files so far, each followed by its check against the fp32 ONNX on the
same corpus sample (verify.check_stage; a stage that misses its bound stops the export, naming it), and
``predict``s what it does to the shipped files for the size prediction (scan.py). ``ship`` runs the stages of
``STAGES`` that apply, with a policy's graph stages in their place (``order``), then places the files the
target's format ships under their names (formats.py). A stage that needs the export's data (a policy's id table, the
string input's plan and texts) is given to ``ship`` configured, in place of the registered one of its name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from pema_export.bundle import StagedBundle
from pema_export.stages.formats import Format, format_of

if TYPE_CHECKING:
    from pema_export.profiles import Target
    from pema_export.timings import Timings
    from pema_export.verify import OnnxReference


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


@dataclass(frozen=True)
class TextInput:
    """A model file that takes strings (stages/string_input.py): what later stages need to open and check it."""

    ids_model: Path  # the ids-in model it wraps (the mobile usability report reads the transformer behind it)
    custom_op_library: str  # onnxruntime-extensions' shared library: every session and the ORT conversion register it


@dataclass(frozen=True)
class ModelFile:
    """A model file on its way through the stages."""

    path: Path
    precision: str  # "fp32", "int8" or "fp16": which bound its checks apply
    reference: OnnxReference  # what its checks compare with, its feeds in the ids this file takes
    kind: str = "onnx"  # "onnx" or "ort"
    beside: tuple[Path, ...] = ()  # files that ship next to it (the ORT operator config)
    text_input: TextInput | None = None  # set once the tokenizer is in the graph: the file takes strings


@dataclass(frozen=True)
class GraphEstimate:
    """What the size prediction knows of a shipped model file."""

    kind: str = "onnx"
    fused: bool = False  # onnxruntime's transformer fusions applied
    precision: str = "none"
    string_input: bool = False  # the in-graph tokenizer is in front of it (--tokenizer in-graph)


@dataclass
class Shipped:
    """The manifest's record of the stages and of what the bundle's model file(s) are."""

    stages: list[dict] = field(default_factory=list)
    embedding_bytes: dict[str, dict] = field(default_factory=dict)
    mobile: dict | None = None
    string_input: dict | None = None  # --tokenizer in-graph: the plan and its checks (stages/string_input.py)


@dataclass
class ShipContext:
    """What every stage of one ``ship`` sees; stages add their records to ``shipped``."""

    target: Target
    format: Format
    shape: ModelShape
    out: Path
    work: Path  # scratch files
    log: Callable[[str], None]
    shipped: Shipped

    def shipped_name(self, model: ModelFile) -> str:
        return self.format.model_name(self.out, model.precision)


class Stage(Protocol):
    name: str
    order: int  # place in the sequence: optimize 10, quantize 20, id table 30, string input 35, ORT conversion 40

    def applies(self, target: Target) -> bool: ...

    def label(self, target: Target) -> str: ...

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]: ...

    def predict(self, graphs: list[GraphEstimate], target: Target, model_type: str) -> list[GraphEstimate]: ...


def checked_figures(check) -> str:
    """A stage check's figure for the log."""
    if check.top1_agreement is not None:
        return f"top-1 agreement with fp32 {check.top1_agreement:.2%} on {check.texts_checked} texts"
    if check.min_cosine is not None:
        return f"min cosine to fp32 {check.min_cosine:.4f} on {check.texts_checked} texts"
    return f"max |diff| vs fp32 {check.max_abs_diff:.2e} on {check.texts_checked} texts"


# Imported after the interface they implement.
from pema_export.stages import optimize, ort_format, quantize, string_input  # noqa: E402
from pema_export.stages.quantize import embedding_bytes  # noqa: E402

# The target-driven stages; an OOV policy adds its own (AppliedPolicy.graph_stages).
STAGES: tuple[Stage, ...] = (optimize.STAGE, quantize.STAGE, string_input.STAGE, ort_format.STAGE)


def planned_stages(target: Target, graph_stages: Sequence[Stage] = ()) -> list[Stage]:
    """The stages that apply to ``target``, in order; a configured stage in ``graph_stages`` replaces the registered
    one of the same name."""
    given = {stage.name for stage in graph_stages}
    candidates = (*(stage for stage in STAGES if stage.name not in given), *graph_stages)
    return sorted((stage for stage in candidates if stage.applies(target)), key=lambda stage: stage.order)


def stage_names(target: Target) -> str:
    return " -> ".join(stage.label(target) for stage in planned_stages(target)) or "fp32 as exported"


def ship(
    target: Target,
    fp32: Path,
    shape: ModelShape,
    reference: OnnxReference,
    staged: StagedBundle,
    out: Path,
    work: Path,
    log: Callable[[str], None] = lambda message: None,
    graph_stages: Sequence[Stage] = (),
    timings: Timings | None = None,
) -> Shipped:
    """Run the target's stages on ``fp32`` (scratch files in ``work``), verify each, and stage the shipped files.

    ``graph_stages`` (an OOV policy's, e.g. remap's id table; the configured string input) go into every model file
    before the ORT conversion, so an .ort file carries them and its check runs on the inputs they take. ``timings``:
    records each stage's wall seconds (its run and its check) as ``stage NAME``, and the placing of the files as
    ``stage files``."""
    from pema_export.timings import Timings

    timings = timings or Timings()
    shipped = Shipped()
    fp32_embedding = embedding_bytes(fp32, shape.vocab_size)
    shipped.stages.append({"stage": "export", "precision": "fp32", "embedding": fp32_embedding.as_manifest()})
    shipped.embedding_bytes["fp32"] = {"dtype": fp32_embedding.dtype, "bytes": fp32_embedding.bytes}
    ctx = ShipContext(target, format_of(target), shape, out, work, log, shipped)
    models = [ModelFile(fp32, "fp32", reference)]
    for stage in planned_stages(target, graph_stages):
        with timings.step(f"stage {stage.label(target)}"):
            models = stage.run(models, ctx)
    with timings.step("stage files"):
        for model in models:
            name = ctx.shipped_name(model)
            _place(model.path, staged, name)
            for path in model.beside:
                _place(path, staged, str(Path(name).parent / path.name))
            shipped.embedding_bytes[name] = EMBEDDING_BYTES[model.kind](staged.path(name), shape.vocab_size)
    return shipped


def _onnx_embedding_bytes(path: Path, vocab_size: int) -> dict:
    table = embedding_bytes(path, vocab_size)
    return {"dtype": table.dtype, "bytes": table.bytes}


def _ort_embedding_bytes(path: Path, vocab_size: int) -> dict:
    dtype, size = ort_format.ort_embedding_bytes(path, vocab_size)
    return {"dtype": dtype, "bytes": size}


# How the input-embedding table of each kind of model file is measured.
EMBEDDING_BYTES = {"onnx": _onnx_embedding_bytes, "ort": _ort_embedding_bytes}


def _place(model: Path, staged: StagedBundle, name: str) -> None:
    target = staged.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, target)


# Graph structure per transformer layer (nodes, names, quantization scales: everything in the model file that is
# not a weight), by file kind, graph kind and number format, measured on MiniLM bundles (file bytes minus
# predicted weight bytes, over 6 layers; the larger of classifier and encoder).
GRAPH_BYTES_PER_LAYER = {
    ("onnx", "fused", "none"): 3_000,
    ("onnx", "fused", "fp16"): 3_000,
    ("onnx", "fused", "int8"): 8_500,
    ("onnx", "plain", "none"): 18_500,
    ("onnx", "plain", "fp16"): 18_500,
    ("onnx", "plain", "int8"): 34_000,
    ("ort", "plain", "none"): 30_000,
    ("ort", "plain", "int8"): 41_500,
}


def graph_bytes_per_layer(graph: GraphEstimate) -> int:
    kind = "fused" if graph.fused else "plain"
    # an ORT file from a fused graph is not measured: the plain one is the larger, so the prediction stays above
    return GRAPH_BYTES_PER_LAYER.get((graph.kind, kind, graph.precision)) or GRAPH_BYTES_PER_LAYER[(graph.kind, "plain", graph.precision)]


def predicted_model_files(target: Target, model_type: str) -> list[GraphEstimate]:
    """The model files the target's stages ship, as the size prediction sees them."""
    graphs = [GraphEstimate()]
    for stage in planned_stages(target):
        graphs = stage.predict(graphs, target, model_type)
    return graphs

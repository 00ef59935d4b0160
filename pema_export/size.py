"""Where a bundle's bytes go: per file, and inside each ONNX/ORT model per part, from the graph's initializers.

Parts: token embedding (the exact rows), the compressed tail of the token embedding (``--oov tail``),
position/type embeddings, encoder layers, head, other. An initializer is placed by its
name, or, where the exporter gave it an anonymous name (``onnx::MatMul_746``), by the names of the nodes that
read it, following it through DequantizeLinear/Transpose/Cast chains.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pema_export.bundle import MANIFEST_NAME, check_complete, is_staging
from pema_export.timings import TIMINGS_NAME
from pema_export.manifest import Manifest

PARTS = ("token_embedding", "token_embedding_tail", "position_embeddings", "encoder_layers", "head", "other")
MODEL_SUFFIXES = (".onnx", ".ort")

_PATTERNS = [  # first match wins; tested against a name with '/' turned into '.'
    # --oov tail: the codes, codebook and row index of the rows outside the corpus (rowcodes.TailEmbedding)
    ("token_embedding_tail", re.compile(r"word_embeddings\.(row_of|codes|codebook|offsets)")),
    ("position_embeddings", re.compile(r"position_embeddings|token_type_embeddings|embed_positions|\bwpe\b|segment_embedding")),
    ("token_embedding", re.compile(r"word_embeddings|embed_tokens|\bwte\b|shared\.weight|word_embedding")),
    ("head", re.compile(r"classifier|pre_classifier|pooler|lm_head|vocab_projector|vocab_transform|cls\.predictions|predictions\.|\.score\b|qa_outputs")),
    ("encoder_layers", re.compile(r"encoder|layers?\.\d+|transformer\.layer|\.h\.\d+|attention|intermediate|ffn")),
]
# Fused contrib ops carry no module path in their names; their inputs say what they are.
_FUSED_INPUTS = {"EmbedLayerNormalization": {2: "token_embedding", 3: "position_embeddings", 4: "position_embeddings"}}
_FUSED_ENCODER_OPS = {"Attention", "MultiHeadAttention", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
                      "BiasGelu", "FastGelu", "QAttention", "QOrderedAttention", "MatMulNBits", "GatherBlockQuantized"}
_PASS_THROUGH_OPS = {"DequantizeLinear", "Transpose", "Cast", "Reshape", "Identity", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class Initializer:
    name: str
    data: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.data)


@dataclass
class ModelBreakdown:
    parts: dict[str, int]  # part -> bytes of its initializers
    parts_deflate: dict[str, int]  # part -> its initializers deflated one by one (an upper bound of the zip's share)

    @property
    def initializer_bytes(self) -> int:
        return sum(self.parts.values())


@dataclass
class FileSize:
    name: str
    size_bytes: int
    deflate_bytes: int
    breakdown: ModelBreakdown | None = None


@dataclass
class SizeReport:
    bundle_dir: Path
    files: list[FileSize]
    manifest: Manifest | None = field(default=None, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def total_deflate_bytes(self) -> int:
        return sum(f.deflate_bytes for f in self.files)

    def parts(self, deflated: bool = False) -> dict[str, int]:
        """Bytes per part over all model files, plus graph structure, tokenizer and metadata files.

        Raw bytes sum to the total; deflated model parts are deflated initializer by initializer.
        """
        totals = dict.fromkeys((*PARTS, "graph_structure", "tokenizer", "metadata"), 0)
        for entry in self.files:
            if entry.breakdown is not None:
                parts = entry.breakdown.parts_deflate if deflated else entry.breakdown.parts
                for part, size in parts.items():
                    totals[part] += size
                structure = entry.size_bytes - entry.breakdown.initializer_bytes
                totals["graph_structure"] += structure if not deflated else max(
                    0, entry.deflate_bytes - sum(entry.breakdown.parts_deflate.values())
                )
            elif entry.name.startswith("tokenizer") or entry.name.endswith((".model", "vocab.txt")):
                totals["tokenizer"] += entry.deflate_bytes if deflated else entry.size_bytes
            else:
                totals["metadata"] += entry.deflate_bytes if deflated else entry.size_bytes
        return totals

    def to_json(self) -> dict:
        return {
            "bundle": str(self.bundle_dir),
            "total_bytes": self.total_bytes,
            "total_deflate_bytes": self.total_deflate_bytes,
            "parts": self.parts(),
            "parts_deflate": self.parts(deflated=True),
            "files": [
                {
                    "name": f.name,
                    "bytes": f.size_bytes,
                    "deflate_bytes": f.deflate_bytes,
                    **({"parts": f.breakdown.parts, "parts_deflate": f.breakdown.parts_deflate} if f.breakdown else {}),
                }
                for f in self.files
            ],
            "has_manifest": self.manifest is not None,
        }


def bundle_report(bundle_dir: str | Path) -> SizeReport:
    """Measure every file of a bundle folder (the manifest included: it ships too; the export's timings do not)."""
    bundle_dir = Path(bundle_dir)
    from pema_export.errors import OutputError

    if not bundle_dir.is_dir():
        raise OutputError(f"bundle folder not found: {bundle_dir}" if not bundle_dir.exists() else
                          f"{bundle_dir} is not a folder: pass the bundle's folder")
    # a half-moved or mixed bundle is refused here rather than measured (bundle.py: the move into place)
    check_complete(bundle_dir)
    files = []
    # staging folders of running (or killed) exports are not part of the bundle, nor the export's timings
    for path in sorted(p for p in bundle_dir.rglob("*")
                       if p.is_file() and not is_staging(p, bundle_dir) and p.name != TIMINGS_NAME):
        data = path.read_bytes()
        breakdown = model_breakdown(path) if path.suffix in MODEL_SUFFIXES else None
        files.append(FileSize(str(path.relative_to(bundle_dir)), len(data), deflate_size(data), breakdown))
    if not files:
        raise OutputError(f"bundle folder {bundle_dir} is empty")
    manifest_path = bundle_dir / MANIFEST_NAME
    manifest = Manifest.read(manifest_path) if manifest_path.is_file() else None
    return SizeReport(bundle_dir=bundle_dir, files=files, manifest=manifest)


def deflate_size(data: bytes) -> int:
    """Bytes after zip's deflate at its default level: what the file adds to an APK or IPA."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return len(compressor.compress(data)) + len(compressor.flush())


def model_breakdown(path: Path) -> ModelBreakdown:
    from pema_export.errors import OutputError

    try:
        initializers, consumers = _read_ort(path) if path.suffix == ".ort" else _read_onnx(path)
    except Exception as exc:  # protobuf and flatbuffers raise their own types for a file that is not a model
        raise OutputError(f"{path} is not a readable {path.suffix[1:].upper()} model ({exc.__class__.__name__})") from None
    parts = {part: 0 for part in PARTS}
    parts_deflate = {part: 0 for part in PARTS}
    for initializer in initializers:
        part = classify(initializer.name, consumers)
        parts[part] += initializer.size_bytes
        parts_deflate[part] += deflate_size(initializer.data)
    return ModelBreakdown(parts, parts_deflate)


def classify(name: str, consumers: dict[str, list[tuple[str, str, int, list[str]]]], _depth: int = 0) -> str:
    """The part an initializer (or a value computed from it) belongs to."""
    part = _match(name)
    if part or _depth > 4:
        return part or "other"
    for node_name, op_type, index, outputs in consumers.get(name, []):
        fused = _FUSED_INPUTS.get(op_type, {}).get(index)
        if fused:
            return fused
        part = _match(node_name)
        if part:
            return part
        if op_type in _FUSED_ENCODER_OPS:
            return "encoder_layers"
        if op_type in _PASS_THROUGH_OPS:
            for output in outputs:
                part = classify(output, consumers, _depth + 1)
                if part != "other":
                    return part
    return "other"


def _match(name: str) -> str | None:
    normalized = name.replace("/", ".")
    return next((part for part, pattern in _PATTERNS if pattern.search(normalized)), None)


def _read_onnx(path: Path):
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    from onnx import numpy_helper

    initializers = [
        Initializer(t.name, t.raw_data or numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer
    ]
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for index, value in enumerate(node.input):
            consumers.setdefault(value, []).append((node.name, node.op_type, index, list(node.output)))
    return initializers, consumers


def _read_ort(path: Path):
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    session = InferenceSession.InferenceSession.GetRootAsInferenceSession(path.read_bytes(), 0)
    graph = session.Model().Graph()
    initializers = []
    for i in range(graph.InitializersLength()):
        tensor = graph.Initializers(i)
        initializers.append(Initializer(tensor.Name().decode(), tensor.RawDataAsNumpy().tobytes() if tensor.RawDataLength() else b""))
    consumers: dict[str, list] = {}
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        outputs = [node.Outputs(j).decode() for j in range(node.OutputsLength())]
        for index in range(node.InputsLength()):
            consumers.setdefault(node.Inputs(index).decode(), []).append(
                (node.Name().decode(), node.OpType().decode(), index, outputs)
            )
    return initializers, consumers


def render_table(report: SizeReport) -> str:
    """The human table: files, then parts, each with bytes, share of the total, and deflated bytes."""
    total = report.total_bytes
    rows = [f"{'file':34s} {'bytes':>14s} {'share':>7s} {'deflated':>14s}"]
    for entry in report.files:
        rows.append(f"{entry.name:34s} {entry.size_bytes:>14,} {entry.size_bytes / total:>7.1%} {entry.deflate_bytes:>14,}")
    rows.append(f"{'total':34s} {total:>14,} {1:>7.1%} {report.total_deflate_bytes:>14,}")
    rows.append("")
    rows.append(f"{'part':34s} {'bytes':>14s} {'share':>7s} {'deflated':>14s}")
    deflated = report.parts(deflated=True)
    for part, size in report.parts().items():
        if size:
            rows.append(f"{part:34s} {size:>14,} {size / total:>7.1%} {deflated[part]:>14,}")
    if report.manifest is None:
        rows.append("")
        rows.append("(no pema-manifest.json: sizes are read from the files alone)")
    else:
        vocab = report.manifest.vocab
        if vocab:
            rows.append("")
            rows.append(f"vocabulary: {vocab.kept or 0:,} of {vocab.original or 0:,} tokens kept")
    return "\n".join(rows)

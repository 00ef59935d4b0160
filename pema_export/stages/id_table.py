"""An id table in front of the graph: the model takes one numbering of ids and runs another.

``--oov remap``'s graph stage (oov/remap.py): the app sends the original tokenizer's ids, and the table turns each
into the kept id it runs as (itself when kept, else its nearest kept token). Every model file gets it before the
ORT conversion, so an .ort file carries it too. It is a lookup, so the check is exact: on the corpus sample's
original ids the model with the table must answer bit for bit as the model before it did on the pruned ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from pema_export.errors import ModelError, VerificationError
from pema_export.stages import GraphEstimate, ModelFile, ShipContext

ID_MAP_NAME = "pema_id_map"
# The table's two nodes (Gather, Cast) and names, besides its 4 bytes per original id.
GRAPH_BYTES = 300


def prepend_id_remap(src: Path, dst: Path, id_map: np.ndarray) -> None:
    """Write ``src`` as ``dst`` taking original ids: input_ids -> Gather(id_map) -> Cast(int64) -> every old consumer.

    The table is int32 (4 bytes per original id); the Cast keeps every consumer's input type as exported."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if "input_ids" not in {i.name for i in graph.input}:
        raise ModelError("the exported graph has no input_ids input to remap")
    remapped = "input_ids_pruned"
    for node in graph.node:
        node.input[:] = [remapped if name == "input_ids" else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(id_map.astype(np.int32), ID_MAP_NAME))
    nodes = [
        helper.make_node("Gather", [ID_MAP_NAME, "input_ids"], ["input_ids_pruned_int32"], name="pema_id_remap", axis=0),
        helper.make_node("Cast", ["input_ids_pruned_int32"], [remapped], name="pema_id_remap_cast", to=TensorProto.INT64),
    ]
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    onnx.save(model, str(dst))


@dataclass
class IdTable:
    """The stage, with its record for the manifest (the files it went into, the texts each was checked on)."""

    id_map: np.ndarray  # int64, one per original id: the kept id it runs as
    kept_ids: np.ndarray  # the original id of each kept id, to send the reference's texts as original ids
    remapped_ids: int  # original ids that run as another token
    models: list[str] = field(default_factory=list)
    texts_checked: int = 0
    name: ClassVar[str] = "id table"
    order: ClassVar[int] = 30

    def applies(self, target) -> bool:
        return True

    def label(self, target) -> str:
        return self.name

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]:
        tabled = []
        for index, model in enumerate(models):
            # the first keeps the name the ORT format's mobile usability report has always shown
            path = ctx.work / ("remapped.onnx" if index == 0 else f"remapped-{index}.onnx")
            prepend_id_remap(model.path, path, self.id_map)
            tabled.append(replace(model, path=path, reference=self._check(model, path, ctx.shipped_name(model))))
        ctx.log(f"--oov remap: id table ({4 * len(self.id_map):,} bytes) in {', '.join(sorted(self.models))}; "
                "outputs on original ids identical to the pruned model's")
        return tabled

    def _check(self, model: ModelFile, tabled: Path, name: str):
        """Raise unless ``tabled`` on original ids answers exactly as ``model`` on its own; the reference with
        original ids as its feeds, so the stages after this one are checked on the ids the app will send."""
        import onnxruntime as ort

        reference = model.reference
        original = replace(reference, feeds=[{**feed, "input_ids": self.kept_ids[feed["input_ids"]]} for feed in reference.feeds])
        sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (model.path, tabled)]
        inputs = [{i.name for i in session.get_inputs()} for session in sessions]
        first_text = 0
        for pruned_feed, original_feed in zip(reference.feeds, original.feeds):
            # a batch of texts (verify.length_groups) on both sides: the same rows, so the lookup must be exact
            want = sessions[0].run(None, {k: v for k, v in pruned_feed.items() if k in inputs[0]})
            got = sessions[1].run(None, {k: v for k, v in original_feed.items() if k in inputs[1]})
            rows = len(pruned_feed["input_ids"])
            diff = np.max([np.abs(a - b).reshape(rows, -1).max(axis=1) for a, b in zip(got, want)], axis=0)
            if diff.max() > 0.0:
                row = int(diff.argmax())
                text = reference.texts[first_text + row]
                raise VerificationError(f"--oov remap: {name} with the id table differs by {diff[row]:.3g} on corpus text {text[:80]!r}")
            first_text += rows
        self.models.append(name)
        self.texts_checked = len(reference.texts)
        return original

    def predict(self, graphs: list[GraphEstimate], target, model_type: str) -> list[GraphEstimate]:
        # its bytes count with its policy's (OovPolicy.bytes_predictor), as the scan has always counted them
        return graphs

    def as_manifest(self) -> dict:
        return {"table": ID_MAP_NAME, "table_bytes": 4 * len(self.id_map), "remapped_ids": self.remapped_ids,
                "models": sorted(self.models), "texts_checked": self.texts_checked}

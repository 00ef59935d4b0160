"""``--tokenizer in-graph``: the shipped tokenizer.json as nodes in front of every model file; the app sends strings.

The tokenizer (pema_export.string_input: onnxruntime-extensions ops of the mobile packages plus standard ops) goes in
front of the *final* ids-in model: after the fusions, quantization and a policy's id table, before the ORT conversion
(which then registers onnxruntime-extensions' custom-op library; its operator config lists the ai.onnx.contrib
domain). The tokenizer is integer and string work with nothing to round, so it is checked exactly, on its own terms:

- fidelity: the graph's ids equal tokenizer.json's (Python ``tokenizers``) on every corpus text and every ``--eval``
  text, else the export fails naming the first text that differs;
- parity: the string-in model's outputs equal the ids-in model's on tokenizers' ids (the stages' corpus sample and
  the ``--eval`` texts), one text per run as an app calls it.

Later stages open the string-in model through ``string_input.session`` and feed it the texts (verify.check_stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Iterable

from pema_export.stages import GraphEstimate, ModelFile, ShipContext, TextInput

# What a model file carries beyond the tokenizer graph's own serialized bytes once the tokenizer is merged in, measured
# on the tiny MiniLM-vocabulary BERT (WordPiece, pruned and original vocabulary), RoBERTa (BPE) and XLM-R (Unigram):
# .onnx -154 to -30 bytes (shared names); .ort 352-369 bytes per tokenizer node (its name, inputs, outputs and kernel
# type records in the flatbuffer). And the manifest's string_input record, stage entries and notes: 2.9 kB measured.
ONNX_MERGE_BYTES = 200
ORT_BYTES_PER_NODE = 400
MANIFEST_BYTES = 4_000
HELDOUT_PARITY_TEXTS = 1000  # --eval texts added to the parity check (all of them, up to this many)
# Why the string-in model gives no character offsets per token (the manifest and docs/string-input.md say it).
NO_OFFSETS = (
    "not produced: no onnxruntime-extensions op of the mobile packages reports offsets in tokenizers' units "
    "(BertTokenizer: positions in the text it is given, here the normalized table output; GPT2Tokenizer: byte "
    "positions; SentencepieceTokenizer: byte starts), and mapping them back exactly needs each family's alignment "
    "(normalizer per character, byte-level tokens covering parts of a character, trimmed spaces, the Metaspace "
    "prefix) built and verified as graph; an approximation is not shipped. input_ids and attention_mask are outputs "
    "of per-token models; tokenizer.json in the bundle gives offsets with tokenizers where an app needs them"
)


def per_token(model_path: Path) -> bool:
    """Whether the model answers per token (a masked LM's logits, an unpooled encoder's states, per-token labels):
    the app then needs ``input_ids`` and ``attention_mask`` to read the rows. A pooled encoder is read by its
    sentence vector, a classifier by its logits."""
    import onnx

    from pema_export.tasks import SENTENCE_OUTPUT

    outputs = onnx.load(str(model_path), load_external_data=False).graph.output
    if any(o.name == SENTENCE_OUTPUT for o in outputs):
        return False
    return any(len(o.type.tensor_type.shape.dim) == 3 for o in outputs)


def plan_for(source_folder: Path, tokenizer_json: dict, shipped_json: dict, *, max_length: int, pad_id: int = 0):
    """The in-graph tokenizer's plan for ``shipped_json`` (the bundle's tokenizer.json, pruned or original) with the
    SentencePiece ``.model`` the bundle ships beside it (Unigram); InGraphTokenizerError, in one line, naming what the
    ops cannot reproduce. ``tokenizer_json``: the source model's own."""
    from pema_export.string_input import plan_string_input
    from pema_export.tokenizers.sentencepiece_model import prune_sentencepiece_files

    models = prune_sentencepiece_files(source_folder, tokenizer_json, shipped_json)
    return plan_string_input(shipped_json, max_length=max_length, pad_id=pad_id, sentencepiece_model=next(iter(models.values()), None))


def predicted_bytes(plan, kind: str) -> int:
    """Bytes the string input adds to one model file of ``kind`` ("onnx" or "ort"): the tokenizer graph built for
    real from ``plan`` (its tables are most of it), and what merging it adds."""
    from pema_export.string_input import tokenizer_model

    model = tokenizer_model(plan)
    merged = ORT_BYTES_PER_NODE * _node_count(model.graph) if kind == "ort" else ONNX_MERGE_BYTES
    return len(model.SerializeToString()) + merged


def _node_count(graph) -> int:
    """Nodes of ``graph`` and of the subgraphs in their attributes (the Loop body)."""
    return sum(1 + sum(_node_count(attribute.g) for attribute in node.attribute if attribute.HasField("g")) for node in graph.node)


@dataclass
class StringInput:
    """The stage; configured by the pipeline with the plan (pema_export.string_input.plan_string_input on the
    shipped tokenizer.json) and the texts to check, with its record for the manifest."""

    plan: object | None = None  # string_input.StringInputPlan; None: the registered stage (predictions only)
    corpus_texts: Callable[[], Iterable[str]] | None = None  # every corpus text, streamed (called once per model file)
    heldout_texts: tuple[str, ...] = ()  # the --eval file's texts
    record: dict = field(default_factory=dict)
    name: ClassVar[str] = "string input"
    order: ClassVar[int] = 35

    def applies(self, target) -> bool:
        return target.tokenizer == "in-graph"

    def label(self, target) -> str:
        return "string input (in-graph tokenizer)"

    def run(self, models: list[ModelFile], ctx: ShipContext) -> list[ModelFile]:
        from pema_export.string_input import add_string_input, check_extensions, check_fidelity, check_string_parity
        from pema_export.string_input.verify import PARITY_ATOL, tokenizer_only

        if self.plan is None or self.corpus_texts is None:
            raise RuntimeError("the string input stage runs only as configured by the pipeline")
        plan, library = self.plan, check_extensions()
        strings = []
        for index, model in enumerate(models):
            path = ctx.work / ("string-in.onnx" if index == 0 else f"string-in-{index}.onnx")
            rows_out = per_token(model.path)
            add_string_input(model.path, plan, path, per_token=rows_out)
            tokenizer = tokenizer_only(path)
            corpus = check_fidelity(tokenizer, plan.tokenizer_json, self.corpus_texts(), max_length=plan.max_length, what="corpus text")
            heldout = check_fidelity(tokenizer, plan.tokenizer_json, self.heldout_texts, max_length=plan.max_length, what="--eval text")
            texts = list(dict.fromkeys([*model.reference.texts, *self.heldout_texts[:HELDOUT_PARITY_TEXTS]]))
            parity = check_string_parity(path, model.path, plan.tokenizer_json, texts, max_length=plan.max_length, pad_id=plan.pad_id)
            name = ctx.shipped_name(model)
            ctx.log(f"string input ({plan.family}, {', '.join(plan.ops)}) in {name}: ids equal tokenizer.json on "
                    f"{corpus.texts_checked:,} corpus and {heldout.texts_checked:,} --eval texts; outputs equal the ids-in "
                    f"model's on {parity.texts_checked:,} texts (max |diff| {parity.max_abs_diff:.2g})")
            checks = {
                "fidelity": {"compared_with": "tokenizer.json (Python tokenizers, truncated to max_length)",
                             "corpus_texts": corpus.texts_checked, "heldout_texts": heldout.texts_checked,
                             "tokens_checked": corpus.tokens_checked + heldout.tokens_checked, "mismatches": 0},
                "parity": {"compared_with": "the ids-in model on tokenizers' ids", "texts_checked": parity.texts_checked,
                           "max_abs_diff": parity.max_abs_diff, "atol": PARITY_ATOL, "outputs": list(parity.outputs)},
            }
            ctx.shipped.stages.append({"stage": self.name, "model": name, **checks})
            self._record(name, rows_out, checks)
            reference = comparable_reference(model.reference, plan.tokenizer_json, plan.max_length)
            strings.append(replace(model, path=path, reference=reference, text_input=TextInput(model.path, library)))
        ctx.shipped.string_input = self.record
        return strings

    def _record(self, name: str, rows_out: bool, checks: dict) -> None:
        if not self.record:
            self.record.update(self.plan.as_manifest())
            self.record.update({
                "outputs_added": ["input_ids", "attention_mask"] if rows_out else [],
                "offsets": NO_OFFSETS,
                "app_packages": {"android": "com.microsoft.onnxruntime:onnxruntime-extensions-android",
                                 "ios": "onnxruntime-extensions-c (CocoaPods)"},
                "models": [],
            })
        self.record["models"].append({"file": name, **checks})

    def predict(self, graphs: list[GraphEstimate], target, model_type: str) -> list[GraphEstimate]:
        # its bytes depend on the shipped vocabulary: scan.predict_sizes adds predicted_bytes for these files
        return [replace(graph, string_input=True) for graph in graphs]


def comparable_reference(reference, tokenizer_json: dict, max_length: int):
    """The stages' reference restricted to the texts whose reference ids are the shipped tokenizer's: a string-in
    model tokenizes itself, so it is compared on texts where the reference was fed what the app's text becomes. All
    of them, except under --oov remap with a capped vocabulary, whose reference runs the pruned segmentation of a
    text holding a dropped token (the id table's check covers those)."""
    from pema_export.vocab import open_tokenizer

    tokenizer = open_tokenizer(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    keep, start = [], 0
    for index, feed in enumerate(reference.feeds):
        mask = feed["attention_mask"].astype(bool)
        texts = reference.texts[start : start + len(mask)]
        encodings = tokenizer.encode_batch(texts)
        if all(encoding.ids == feed["input_ids"][row][mask[row]].tolist() for row, encoding in enumerate(encodings)):
            keep.append((index, start, len(mask)))
        start += len(mask)
    if not keep or len(keep) == len(reference.feeds):  # none comparable: the later checks name the text that differs
        return reference
    return replace(
        reference,
        texts=[text for _index, begin, rows in keep for text in reference.texts[begin : begin + rows]],
        feeds=[reference.feeds[index] for index, _begin, _rows in keep],
        outputs=[reference.outputs[index] for index, _begin, _rows in keep],
    )


STAGE = StringInput()

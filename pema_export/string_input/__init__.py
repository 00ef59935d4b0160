"""String in, model outputs out: the shipped tokenizer.json as ONNX nodes in front of the model (``--tokenizer in-graph``).

An Android/iOS app that runs the bundle must otherwise re-implement WordPiece/BPE/Unigram in Kotlin or Swift exactly as
tokenizer.json does. Here the tokenizer becomes part of the graph, built from onnxruntime-extensions ops that its
mobile packages (Maven ``com.microsoft.onnxruntime:onnxruntime-extensions-android``, CocoaPods
``onnxruntime-extensions-c``) contain, and from standard ONNX ops:

- ``plan_string_input``: check, before any work, that the family can be reproduced exactly; refuse in one line
  (``InGraphTokenizerError``) what the ops cannot do.
- ``add_string_input``: write the string-in model from the final ids-in model (after optimize/quantize; before the ORT
  conversion, which takes the custom-op library).
- ``check_fidelity``: the in-graph ids equal Python ``tokenizers``' on every given text, else ``VerificationError``
  naming the first text; ``check_string_parity``: string-in outputs equal the ids-in model's.

One module per family (wordpiece, bpe, unigram) builds the nodes that take one text to its content ids; ``graph``
adds what is shared: the loop over the batch, truncation, the post-processor's special tokens, padding and masks.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from pema_export.errors import InGraphTokenizerError
from pema_export.string_input import bpe, graph, unigram, wordpiece
from pema_export.string_input.graph import TEXT_INPUT, Template
from pema_export.string_input.runtime import check_extensions, session, session_options
from pema_export.string_input.verify import FidelityReport, ParityReport, check_fidelity, check_string_parity

__all__ = [
    "StringInputPlan", "plan_string_input", "tokenizer_model", "add_string_input", "check_fidelity", "check_string_parity",
    "FidelityReport", "ParityReport", "session", "session_options", "check_extensions", "TEXT_INPUT",
]

FAMILIES = {"WordPiece": wordpiece, "BPE": bpe, "Unigram": unigram}
# measured by benchmarks/string_input_sweep.py; docs/string-input.md
NUL_DIFFERENCE = "a text is read up to its first U+0000 (the ops take C strings); tokenizers reads on"


@dataclass(frozen=True)
class StringInputPlan:
    """What the in-graph tokenizer will be, decided before any work: the family's tables and the shared frame."""

    family: str
    family_plan: object  # the family module's plan: its tables and ``body(builder, text) -> content ids``
    template: Template
    max_length: int
    pad_id: int
    tokenizer_json: dict

    @property
    def ops(self) -> tuple[str, ...]:
        return self.family_plan.ops

    def as_manifest(self) -> dict:
        import onnxruntime_extensions

        return {
            "input": TEXT_INPUT,
            "family": self.family,
            "onnxruntime_extensions": onnxruntime_extensions.__version__,
            "custom_ops": {graph.CONTRIB_DOMAIN: sorted(self.ops)},
            "known_differences": [NUL_DIFFERENCE, *self.family_plan.known_differences],
            "max_length": self.max_length,
            "truncation": "right, to max_length including the special tokens (as tokenizers' enable_truncation)",
            "padding": "right, to the longest text of the batch",
            "pad_id": self.pad_id,
        }


def plan_string_input(tokenizer_json: dict, *, max_length: int, pad_id: int, sentencepiece_model: bytes | None = None) -> StringInputPlan:
    """Check that ``tokenizer_json`` (the shipped one) can run in the graph exactly, and plan it; raise
    InGraphTokenizerError naming what cannot. Unigram needs ``sentencepiece_model`` (the shipped ``*.model``)."""
    check_extensions()
    family = tokenizer_json.get("model", {}).get("type")
    if family not in FAMILIES:
        raise InGraphTokenizerError(f"tokenizer family {family} has no in-graph tokenizer (supported: {', '.join(sorted(FAMILIES))})")
    module = FAMILIES[family]
    plain = _without_padding(tokenizer_json)
    family_plan = module.plan(plain, sentencepiece_model) if family == "Unigram" else module.plan(plain)
    template = _template(plain)
    if template.added >= max_length:
        raise InGraphTokenizerError(f"max_length {max_length} leaves no room beside the {template.added} special tokens")
    return StringInputPlan(family, family_plan, template, max_length, pad_id, plain)


def tokenizer_model(plan: StringInputPlan, opset: int = 18):
    """The tokenizer alone (``text`` -> input_ids, attention_mask), built as ``add_string_input`` builds it (to check
    the shipped nodes themselves, cut them out of the string-in model with ``verify.tokenizer_only``)."""
    nodes, initializers, outputs = graph.tokenizer_graph(plan.family_plan.body, plan.template, plan.max_length, plan.pad_id, opset, False)
    return graph.standalone_model(nodes, initializers, outputs, opset)


def add_string_input(model: Path, plan: StringInputPlan, out: Path, *, per_token: bool = False) -> Path:
    """Write ``out``: ``model`` (ids in) with ``text`` [N] strings in and the same outputs, the tokenizer in front.

    ``per_token``: the outputs are per token (last_hidden_state, a masked LM's logits), so ``input_ids`` and
    ``attention_mask`` are outputs too: the app needs them to read the rows (which are real, which is [MASK])."""
    import onnx

    proto = onnx.load(str(model))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    takes = {i.name for i in proto.graph.input}
    nodes, initializers, outputs = graph.tokenizer_graph(
        plan.family_plan.body, plan.template, plan.max_length, plan.pad_id, opset, "token_type_ids" in takes
    )
    merged = graph.merge_in_front(proto, nodes, initializers, outputs, ["input_ids", "attention_mask"] if per_token else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out))
    return out


def _without_padding(tokenizer_json: dict) -> dict:
    plain = copy.deepcopy(tokenizer_json)
    plain["padding"] = None
    plain["truncation"] = None
    return plain


def _template(tokenizer_json: dict) -> Template:
    """The post-processor's special ids before and after one sequence, read from tokenizers' own encodings."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
    encoding = tokenizer.encode("a b")
    sequence = encoding.sequence_ids
    content = [i for i, s in enumerate(sequence) if s is not None]
    if not content:
        raise InGraphTokenizerError("the tokenizer gives no tokens for 'a b'; cannot read its post-processor")
    first, last = content[0], content[-1]
    if any(s is None for s in sequence[first : last + 1]):
        raise InGraphTokenizerError("the post-processor puts special tokens inside the sequence; the graph adds them only around it")
    if any(encoding.type_ids):
        raise InGraphTokenizerError("the post-processor gives a single text non-zero type ids; the ids-in path feeds zeros")
    ids = encoding.ids
    template = Template(tuple(ids[:first]), tuple(ids[last + 1 :]))
    empty = tokenizer.encode("").ids
    if list(empty) != list(template.prefix_ids + template.suffix_ids):
        raise InGraphTokenizerError("the post-processor treats an empty text differently from the rest; refusing")
    return template

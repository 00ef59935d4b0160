"""The tokenizer as ONNX nodes: a Loop over the batch of texts that turns each into padded ids, then the batch.

Each family builds, inside the loop body, the nodes that take one text (a [1] string tensor) to its content ids
(1-D int64, no special tokens). Everything around that is shared and follows what Python ``tokenizers`` does with
the shipped tokenizer.json and ``enable_truncation(max_length)``, which is how the ids-in path encodes:

- truncation keeps the first ``max_length - len(prefix) - len(suffix)`` content ids (right side, as tokenizers'
  default), then the post-processor's prefix and suffix special ids go around them;
- the batch is padded on the right to its longest text with the model's pad id, ``attention_mask`` is 1 on real
  tokens, and ``token_type_ids`` (for models that take them) is 0 everywhere, as the ids-in path feeds them.

Only standard ONNX ops of opset 14+ (written for the model's own opset) and the onnxruntime-extensions ops of the
mobile packages are used, so the graph runs on the Android/iOS packages and survives the ORT format conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pema_export.errors import InGraphTokenizerError

CONTRIB_DOMAIN = "ai.onnx.contrib"  # the domain onnxruntime-extensions registers its ops in
TEXT_INPUT = "text"
PREFIX = "pema_tok/"  # every node, initializer and value this module adds is named under it


@dataclass
class Builder:
    """Collects nodes and initializers with unique names; ``opset`` is the default-domain version they must fit."""

    opset: int
    prefix: str = PREFIX
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    _count: int = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, hint: str = "const", dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        if array.dtype.kind in "OUS":
            tensor = helper.make_tensor(name, TensorProto.STRING, array.shape, [str(v).encode("utf-8") for v in array.ravel()])
        else:
            tensor = numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs) -> str | list[str]:
        """Add one node; return its output name (or names, when ``outputs`` asks for more than one)."""
        names = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"node_{op_type}"), domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def contrib(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs):
        return self.op(op_type, inputs, outputs, domain=CONTRIB_DOMAIN, **attrs)

    # Small vocabulary of int64 tensor manipulations, written once for every opset the targets allow.

    def int64(self, value) -> str:
        return self.const(np.asarray(value, dtype=np.int64), "i64")

    def reduce_max(self, x: str) -> str:
        """The maximum of a non-empty 1-D int64 tensor, as a [1] tensor."""
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.int64([0])], keepdims=1)
        return self.op("ReduceMax", [x], axes=[0], keepdims=1)

    def length(self, x: str) -> str:
        """len(x) of a 1-D tensor, as a [1] int64 tensor."""
        return self.op("Shape", [x])

    def arange(self, n: str) -> str:
        """0..n-1 for a [1] int64 n."""
        scalar = self.op("Squeeze", [n, self.int64([0])])
        return self.op("Range", [self.int64(0), scalar, self.int64(1)])

    def gather(self, table: str, indices: str) -> str:
        return self.op("Gather", [table, indices], axis=0)

    def flag(self, x: str) -> str:
        """A bool tensor as int64 0/1."""
        return self.op("Cast", [x], to=TensorProto.INT64)

    def isin(self, ids: str, table: np.ndarray) -> str:
        """Per id, whether ``table[id]`` is set: a lookup in a 0/1 table over the vocabulary (ids outside: 0)."""
        padded = np.append(np.asarray(table, dtype=np.int64), 0)
        clipped = self.op("Clip", [ids, self.int64(0), self.int64(len(padded) - 1)])
        return self.op("Equal", [self.gather(self.const(padded, "table"), clipped), self.int64(1)])


@dataclass(frozen=True)
class Template:
    """What the post-processor puts around one sequence, read from tokenizers itself."""

    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    @property
    def added(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)


def tokenizer_graph(family_body, template: Template, max_length: int, pad_id: int, opset: int,
                    token_type_ids: bool) -> tuple[list, list, list[str]]:
    """Nodes and initializers taking ``text`` [N] to ``input_ids``/``attention_mask`` (and zero ``token_type_ids``).

    ``family_body(builder, text_1)`` adds the nodes that take one text ([1] string) to its content ids (1-D int64).
    Returns (nodes, initializers, output names)."""
    outer = Builder(opset)
    body = Builder(opset, prefix=f"{PREFIX}text/")
    iteration, condition = body.name("i"), body.name("cond")
    index = body.op("Unsqueeze", [iteration, body.int64([0])])
    text_1 = body.op("Gather", [TEXT_INPUT, index], axis=0)
    content = family_body(body, text_1)
    kept = body.op("Slice", [content, body.int64([0]), body.int64([max_length - template.added])])
    pieces = [body.int64(list(template.prefix_ids)), kept, body.int64(list(template.suffix_ids))]
    row = body.op("Concat", pieces, axis=0)
    row_length = body.length(row)
    pad_amount = body.op("Sub", [body.int64([max_length]), row_length])
    pads = body.op("Concat", [body.int64([0]), pad_amount], axis=0)
    padded = body.op("Pad", [row, pads, body.int64(pad_id)], mode="constant")
    row_length_scalar = body.op("Squeeze", [row_length, body.int64([0])])
    condition_out = body.op("Identity", [condition])
    body_graph = helper.make_graph(
        body.nodes,
        "pema_tokenize_one_text",
        [helper.make_tensor_value_info(iteration, TensorProto.INT64, []), helper.make_tensor_value_info(condition, TensorProto.BOOL, [])],
        [
            helper.make_tensor_value_info(condition_out, TensorProto.BOOL, []),
            helper.make_tensor_value_info(padded, TensorProto.INT64, [max_length]),
            helper.make_tensor_value_info(row_length_scalar, TensorProto.INT64, []),
        ],
        body.initializers,
    )
    count = outer.op("Shape", [TEXT_INPUT])
    count_scalar = outer.op("Squeeze", [count, outer.int64([0])])
    rows, lengths = outer.op("Loop", [count_scalar, outer.const(np.array(True))], 2, body=body_graph)
    # the longest text of the batch (0 for an empty batch) is the padded width
    width = outer.reduce_max(outer.op("Concat", [outer.int64([0]), lengths], axis=0))
    input_ids = outer.op("Slice", [rows, outer.int64([0]), width, outer.int64([1])], ["input_ids"])
    positions = outer.op("Unsqueeze", [outer.arange(width), outer.int64([0])])
    real = outer.op("Less", [positions, outer.op("Unsqueeze", [lengths, outer.int64([1])])])
    outer.op("Cast", [real], ["attention_mask"], to=TensorProto.INT64)
    outputs = ["input_ids", "attention_mask"]
    if token_type_ids:
        outer.op("ConstantOfShape", [outer.op("Shape", [input_ids])], ["token_type_ids"],
                 value=numpy_helper.from_array(np.zeros(1, dtype=np.int64)))
        outputs.append("token_type_ids")
    return outer.nodes, outer.initializers, outputs


def standalone_model(nodes, initializers, outputs: list[str], opset: int) -> onnx.ModelProto:
    """The tokenizer alone as a model: ``text`` [N] -> ids (what the fidelity check runs)."""
    graph = helper.make_graph(
        nodes, "pema_tokenizer",
        [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch_size"])],
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size", "sequence_length"]) for name in outputs],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB_DOMAIN, 1)],
                             producer_name="pema-export")


def run_body(family_body, texts: list[str]) -> list[list[int]]:
    """Each text's content ids from ``family_body`` alone (one session run per text): plan-time probing."""
    from pema_export.string_input.runtime import session

    body = Builder(18)
    content = family_body(body, TEXT_INPUT)
    model = helper.make_model(
        helper.make_graph(body.nodes, "pema_probe", [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, [1])],
                          [helper.make_tensor_value_info(content, TensorProto.INT64, [None])], body.initializers),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(CONTRIB_DOMAIN, 1)],
    )
    runner = session(model.SerializeToString())
    return [runner.run(None, {TEXT_INPUT: np.array([text], dtype=object)})[0].tolist() for text in texts]


def merge_in_front(model: onnx.ModelProto, nodes, initializers, outputs: list[str], extra_outputs: list[str]) -> onnx.ModelProto:
    """``model`` with its id inputs replaced by ``text``: the tokenizer nodes produce them in front of it.

    ``extra_outputs`` (e.g. input_ids for per-token outputs) become graph outputs as well."""
    graph = model.graph
    fed = {i.name for i in graph.input}
    unknown = fed - set(outputs)
    if unknown:
        raise InGraphTokenizerError(f"the model takes inputs the tokenizer does not produce: {', '.join(sorted(unknown))}")
    kept_inputs = [i for i in graph.input if i.name not in outputs]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch_size"])] + kept_inputs)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(list(nodes) + existing)
    graph.initializer.extend(initializers)
    for name in extra_outputs:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch_size", "sequence_length"]))
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return model

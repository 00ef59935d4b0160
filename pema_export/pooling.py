"""Sentence-transformers pooling, twice: in torch (the parity reference) and as ONNX nodes after the encoder."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from pema_export.models import Pooling
from pema_export.tasks import SENTENCE_OUTPUT
MEAN_EPS = 1e-9  # sentence-transformers clamps the token count so an all-pad row cannot divide by zero
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default
# The pooling nodes' names start with this; fp16 conversion leaves them in fp32 (NORM_EPS is 0 in fp16, and a sum
# over 128 tokens' states can overflow it).
POOL_NODE_PREFIX = "pema_pool/"


def pool_torch(pooling: Pooling, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    if pooling.mode == "cls":
        pooled = hidden[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=MEAN_EPS)
    if pooling.normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1, eps=NORM_EPS)
    return pooled


def append_pooling(model: onnx.ModelProto, pooling: Pooling, hidden_name: str = "last_hidden_state") -> onnx.ModelProto:
    """Add a ``sentence_embedding`` output computed from the encoder's hidden states, as the torch code does."""
    graph = model.graph
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name=f"pool/{name}"))
        return f"pool/{name}"

    if pooling.mode == "cls":
        nodes.append(helper.make_node("Gather", [hidden_name, const("zero", np.int64(0))], ["pool/pooled"], axis=1))
    else:
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["pool/mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["pool/mask_f", const("last_axis", np.array([-1], np.int64))], ["pool/mask3"]),
            helper.make_node("Mul", [hidden_name, "pool/mask3"], ["pool/masked"]),
            helper.make_node("ReduceSum", ["pool/masked", const("seq_axis", np.array([1], np.int64))], ["pool/sum"], keepdims=0),
            helper.make_node("ReduceSum", ["pool/mask3", "pool/seq_axis"], ["pool/count"], keepdims=0),
            helper.make_node("Max", ["pool/count", const("mean_eps", np.float32(MEAN_EPS))], ["pool/count_safe"]),
            helper.make_node("Div", ["pool/sum", "pool/count_safe"], ["pool/pooled"]),
        ]
    if pooling.normalize:
        nodes += [
            helper.make_node("ReduceL2", ["pool/pooled", const("hidden_axis", np.array([1], np.int64))], ["pool/norm"], keepdims=1),
            helper.make_node("Max", ["pool/norm", const("norm_eps", np.float32(NORM_EPS))], ["pool/norm_safe"]),
            helper.make_node("Div", ["pool/pooled", "pool/norm_safe"], [SENTENCE_OUTPUT]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["pool/pooled"], [SENTENCE_OUTPUT]))
    for index, node in enumerate(nodes):
        node.name = f"{POOL_NODE_PREFIX}{index}_{node.op_type}"
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    hidden_size = next(
        o.type.tensor_type.shape.dim[2] for o in graph.output if o.name == hidden_name
    )
    output = helper.make_tensor_value_info(SENTENCE_OUTPUT, TensorProto.FLOAT, ["batch_size", None])
    output.type.tensor_type.shape.dim[1].CopyFrom(hidden_size)
    graph.output.append(output)
    onnx.checker.check_model(model)
    return model

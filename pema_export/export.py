"""Export the pruned PyTorch model to ONNX with optimum, dynamic batch and sequence axes."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import onnx
from torch import nn

from pema_export.models import Pooling
from pema_export.pooling import append_pooling
from pema_export.profiles import Target
from pema_export.tasks import Task


def export_onnx(model: nn.Module, task: Task, target: Target, out_path: Path, pooling: Pooling | None = None) -> Path:
    """Write ``out_path`` (one self-contained .onnx file); a sentence-transformers model gets its pooling appended."""
    from optimum.exporters.onnx import onnx_export_from_model

    model.eval()
    with tempfile.TemporaryDirectory(prefix="pema-optimum-") as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _quiet_loggers()
        # optimum's validation uses random inputs and only warns; verify.py does the real parity check.
        onnx_export_from_model(model, output=scratch, task=task.name, opset=target.opset, do_validation=False, preprocessors=[])
        graph = onnx.load(str(Path(scratch) / "model.onnx"))
    if pooling is not None:
        graph = append_pooling(graph, pooling)
    graph.producer_name = "pema-export"
    onnx.save(graph, str(out_path))
    return out_path


def _quiet_loggers() -> None:
    for name in ("optimum", "transformers", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)

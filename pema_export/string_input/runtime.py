"""onnxruntime with onnxruntime-extensions' custom-op library registered: the only way the string-in model loads."""

from __future__ import annotations

import functools
from pathlib import Path

from pema_export.errors import InGraphTokenizerError

EXTENSIONS_VERSION = "0.15.2"  # the version the in-graph tokenizers are built and verified with (constraints.txt)


@functools.lru_cache(maxsize=1)
def check_extensions() -> str:
    """The custom-op library's path; InGraphTokenizerError if onnxruntime-extensions is missing or will not load."""
    try:
        import onnxruntime as ort
        import onnxruntime_extensions
    except ImportError as error:
        raise InGraphTokenizerError(f"--tokenizer in-graph needs onnxruntime-extensions ({error}); pip install onnxruntime-extensions=={EXTENSIONS_VERSION}") from None
    library = onnxruntime_extensions.get_library_path()
    options = ort.SessionOptions()
    try:
        options.register_custom_ops_library(library)
    except Exception as error:  # onnxruntime raises its own types; what matters is that the library did not load
        raise InGraphTokenizerError(
            f"onnxruntime-extensions {onnxruntime_extensions.__version__} cannot be loaded into onnxruntime "
            f"{ort.__version__}: {str(error).strip().splitlines()[0]}"
        ) from None
    return library


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(check_extensions())
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def session(model: Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session for a string-in model (.onnx or .ort, a path or bytes)."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])

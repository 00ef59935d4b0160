"""Target formats: which model files a target's app ships, and how ``--out`` names them.

A profile's ``format`` (targets/*.toml) is one of these entries. A new format is one entry here, the stage that
writes its kind of file when it is not ONNX (as ort_format.py writes .ort), and a profile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pema_export.errors import OutputError

# transformers.js picks the file by the dtype the app asks for
WEB_MODEL = "onnx/model.onnx"
WEB_VARIANTS = {"int8": "onnx/model_quantized.onnx", "fp16": "onnx/model_fp16.onnx"}


@dataclass(frozen=True)
class Format:
    name: str
    model_name: Callable[[Path, str], str]  # (--out, precision of the file) -> its name in the bundle
    # Bytes a bundle carries besides weights and tokenizer (config.json, tokenizer_config.json, the manifest, and for
    # the ORT format required_operators_and_types.config and the manifest's mobile section), for the size
    # prediction. Measured on MiniLM bundles (classifier and sentence encoder): at most 6.5 kB for .onnx bundles,
    # 17.4 kB for .ort ones.
    metadata_bytes: int
    file_kind: str = "onnx"  # the kind of model file it ships: "onnx", or "ort" (written by ort_format.py)
    keeps_fp32: bool = False  # ships the fp32 model beside the quantized one
    out_name: str | None = None  # the only --out file name the layout can take
    profile_keys: tuple[str, ...] = ()  # profile keys only this format takes
    manifest_keys: tuple[str, ...] = ()  # of those, the ones the manifest's target section records
    # why the app cannot take a model with the tokenizer in it (--tokenizer in-graph); empty: it can
    in_graph_tokenizer_refusal: str = ""

    def loaded_name(self, out: Path) -> str:
        """The model file the app loads (the fp32 one where several ship)."""
        return self.model_name(out, "fp32")

    def check_out(self, target_name: str, out: Path) -> None:
        """Refuse an ``--out`` the target's client cannot load."""
        if self.out_name is not None and out.name != self.out_name:
            raise OutputError(
                f"--out {out}: the {target_name} target writes the {self.name} layout, whose model is "
                f"{self.loaded_name(out)}; pass --out {out.parent / self.out_name}"
            )


FORMATS: dict[str, Format] = {
    fmt.name: fmt
    for fmt in (
        # --out itself (e.g. model.onnx): the last stage's model
        Format("onnx", lambda out, precision: out.name, metadata_bytes=6_600),
        # --out with the suffix .ort (DIR/model.onnx -> DIR/model.ort), with required_operators_and_types.config
        Format("ort", lambda out, precision: out.with_suffix(".ort").name, metadata_bytes=17_500, file_kind="ort",
               profile_keys=("ort_optimization_style", "ort_target_platform", "guidance"),
               manifest_keys=("ort_optimization_style", "ort_target_platform")),
        # DIR/onnx/model.onnx (fp32) and the quantized variant transformers.js looks for by dtype:
        # onnx/model_quantized.onnx (dtype "q8") or onnx/model_fp16.onnx (dtype "fp16")
        Format("transformers.js", lambda out, precision: WEB_MODEL if precision == "fp32" else WEB_VARIANTS[precision],
               metadata_bytes=6_600, keeps_fp32=True, out_name="model.onnx",
               in_graph_tokenizer_refusal="transformers.js tokenizes in JavaScript already (it reads the bundle's "
                                          "tokenizer.json), and onnxruntime-web has no onnxruntime-extensions ops"),
    )
}


def format_of(target) -> Format:
    """The entry of a profiles.Target's format (checked when the profile was read)."""
    return FORMATS[target.format]

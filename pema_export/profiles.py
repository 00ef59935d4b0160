"""Target profiles: TOML files in ``targets/`` (shipped in the wheel) or a path the user gives.

A profile says what the app ships: the file format (plain ONNX, ONNX Runtime's ORT format for ONNX Runtime Mobile,
or the transformers.js folder layout), whether onnxruntime's transformer fusions run, the number format
(``quantize``) and which number formats the target can take at all (``quantize_allowed``, checked against
``--quantize`` before any work starts).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from pema_export.errors import TargetError
from pema_export.stages.formats import FORMATS

QUANTIZE = ("none", "int8", "fp16")
ORT_OPTIMIZATION_STYLES = ("Fixed", "Runtime")
ORT_TARGET_PLATFORMS = ("arm", "amd64")
GUIDANCE_EPS = ("nnapi", "coreml")
# where the app's text becomes ids: the app runs tokenizer.json ("ids"), or the model does (docs/string-input.md)
TOKENIZERS = ("ids", "in-graph")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    format: str = "onnx"
    opset: int = 18
    quantize: str = "none"
    source: str = ""
    optimize: bool = False  # onnxruntime.transformers fusions (attention, LayerNorm, GELU) where the architecture has them
    quantize_allowed: tuple[str, ...] = QUANTIZE
    ort_optimization_style: str = "Fixed"
    ort_target_platform: str = "arm"
    guidance: tuple[str, ...] = ()  # mobile EPs whose partitioning the manifest explains
    max_bytes: int | None = None  # the bundle's size budget; `pema-export check` enforces it
    tokenizer: str = "ids"  # --tokenizer: "in-graph" ships a model that takes strings (stages/string_input.py)

    def with_quantize(self, quantize: str | None) -> "Target":
        """The profile with ``--quantize`` applied; a number format the target cannot take is refused by name."""
        if quantize is None:
            return self
        if quantize not in QUANTIZE:
            raise TargetError(f"--quantize {quantize!r} must be one of {', '.join(QUANTIZE)}")
        if quantize not in self.quantize_allowed:
            raise TargetError(
                f"target {self.name} cannot take --quantize {quantize} (it takes {', '.join(self.quantize_allowed)})"
            )
        return replace(self, quantize=quantize)

    def with_tokenizer(self, tokenizer: str | None) -> "Target":
        """The profile with ``--tokenizer`` applied; refused in one line where the target's app cannot take it."""
        chosen = replace(self, tokenizer=tokenizer) if tokenizer is not None else self
        if chosen.tokenizer not in TOKENIZERS:
            raise TargetError(f"--tokenizer {chosen.tokenizer!r} must be one of {', '.join(TOKENIZERS)}")
        refusal = FORMATS[chosen.format].in_graph_tokenizer_refusal
        if chosen.tokenizer == "in-graph" and refusal:
            raise TargetError(f"--tokenizer in-graph cannot serve the {chosen.name} target: {refusal}; use --tokenizer ids")
        return chosen

    def as_manifest(self) -> dict:
        entry = {
            "name": self.name,
            "format": self.format,
            "opset": self.opset,
            "quantize": self.quantize,
            "optimize": self.optimize,
        }
        for key in FORMATS[self.format].manifest_keys:
            entry[key] = getattr(self, key)
        if self.guidance:
            entry["guidance"] = list(self.guidance)
        if self.max_bytes is not None:
            entry["max_bytes"] = self.max_bytes
        if self.tokenizer != "ids":  # bundles with the default keep the manifest bytes they always had
            entry["tokenizer"] = self.tokenizer
        return entry


def _is_str_list(choices: tuple[str, ...]):
    return lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) and x in choices for x in v)


# key -> (type, check, what a valid value is)
_KEYS = {
    "name": (str, lambda v: bool(v), "a non-empty string"),
    "description": (str, lambda v: True, "a string"),
    "format": (str, lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "opset": (int, lambda v: 14 <= v <= 21, "an integer from 14 to 21"),
    "quantize": (str, lambda v: v in QUANTIZE, f"one of {', '.join(QUANTIZE)}"),
    "optimize": (bool, lambda v: True, "true or false"),
    "quantize_allowed": (list, _is_str_list(QUANTIZE), f"a non-empty list of {', '.join(QUANTIZE)}"),
    "ort_optimization_style": (str, lambda v: v in ORT_OPTIMIZATION_STYLES, f"one of {', '.join(ORT_OPTIMIZATION_STYLES)}"),
    "ort_target_platform": (str, lambda v: v in ORT_TARGET_PLATFORMS, f"one of {', '.join(ORT_TARGET_PLATFORMS)}"),
    "guidance": (list, _is_str_list(GUIDANCE_EPS), f"a list of {', '.join(GUIDANCE_EPS)}"),
    "max_bytes": (int, lambda v: v > 0, "a positive integer (bytes)"),
    "tokenizer": (str, lambda v: v in TOKENIZERS, f"one of {', '.join(TOKENIZERS)}"),
}
# key -> the format that alone takes it
_FORMAT_KEYS = {key: fmt.name for fmt in FORMATS.values() for key in fmt.profile_keys}


def builtin_targets() -> dict[str, Path]:
    folder = resources.files("pema_export.targets")
    return {entry.name.removesuffix(".toml"): Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


def load_target(name_or_path: str, quantize: str | None = None, tokenizer: str | None = None) -> Target:
    """A built-in profile by name, or a profile file by path, with ``--quantize`` and ``--tokenizer`` applied;
    unknown names and malformed keys are named."""
    builtin = builtin_targets()
    if name_or_path in builtin:
        path = builtin[name_or_path]
    elif name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise TargetError(f"target profile not found: {path}")
    else:
        raise TargetError(f"unknown target {name_or_path!r}; built-in targets: {', '.join(sorted(builtin))}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"target profile {path} is not valid TOML: {exc}") from None
    return parse_target(data, str(path)).with_quantize(quantize).with_tokenizer(tokenizer)


def parse_target(data: dict, source: str) -> Target:
    for key, value in data.items():
        if key not in _KEYS:
            raise TargetError(f"target profile {source}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        kind, valid, what = _KEYS[key]
        # bool is an int in Python: a bare `opset = true` must not pass as 1
        wrong_type = not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
        if wrong_type or not valid(value):
            raise TargetError(f"target profile {source}: {key} = {value!r} must be {what}")
    if "name" not in data:
        raise TargetError(f"target profile {source}: missing key 'name'")
    values = {"description": "", **data}
    for key in ("quantize_allowed", "guidance"):
        if key in values:
            values[key] = tuple(values[key])
    target = Target(**values, source=source)
    if target.quantize not in target.quantize_allowed:
        raise TargetError(
            f"target profile {source}: quantize = {target.quantize!r} is not in quantize_allowed {list(target.quantize_allowed)}"
        )
    for key, owner in _FORMAT_KEYS.items():
        if key in data and key not in FORMATS[target.format].profile_keys:
            raise TargetError(f"target profile {source}: {key} applies only to format = \"{owner}\", not {target.format!r}")
    return target

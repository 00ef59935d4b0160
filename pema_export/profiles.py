"""Target profiles: TOML files in ``targets/`` (shipped in the wheel) or a path the user gives."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pema_export.errors import TargetError

FORMATS = ("onnx",)
QUANTIZE = ("none",)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    format: str = "onnx"
    opset: int = 18
    quantize: str = "none"
    source: str = ""

    def as_manifest(self) -> dict:
        return {"name": self.name, "format": self.format, "opset": self.opset, "quantize": self.quantize}


# key -> (type, check, what a valid value is)
_KEYS = {
    "name": (str, lambda v: bool(v), "a non-empty string"),
    "description": (str, lambda v: True, "a string"),
    "format": (str, lambda v: v in FORMATS, f"one of {', '.join(FORMATS)}"),
    "opset": (int, lambda v: 14 <= v <= 21, "an integer from 14 to 21"),
    "quantize": (str, lambda v: v in QUANTIZE, f"one of {', '.join(QUANTIZE)}"),
}


def builtin_targets() -> dict[str, Path]:
    folder = resources.files("pema_export.targets")
    return {entry.name.removesuffix(".toml"): Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml")}


def load_target(name_or_path: str) -> Target:
    """A built-in profile by name, or a profile file by path; unknown names and malformed keys are named."""
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
    return parse_target(data, str(path))


def parse_target(data: dict, source: str) -> Target:
    for key, value in data.items():
        if key not in _KEYS:
            raise TargetError(f"target profile {source}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        kind, valid, what = _KEYS[key]
        if not isinstance(value, kind) or isinstance(value, bool) or not valid(value):
            raise TargetError(f"target profile {source}: {key} = {value!r} must be {what}")
    if "name" not in data:
        raise TargetError(f"target profile {source}: missing key 'name'")
    return Target(**{"description": "", **data}, source=source)

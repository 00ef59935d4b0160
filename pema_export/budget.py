"""Size budgets and regression checks for a bundle: what an app team's CI runs the day a model grows.

A budget file (``pema-budget.toml``)::

    max_bytes = 50_000_000            # the whole bundle
    max_deflate_bytes = "40 MB"       # the whole bundle after zip deflate (what the APK/IPA grows by)
    [parts]                           # parts as `pema-export size` names them
    token_embedding = "2 MB"          # shorthand for max_bytes
    encoder_layers = { max_bytes = "45 MB", max_deflate_bytes = "42 MB" }
    [files]
    "model.onnx" = "46 MB"

Sizes are integers (bytes) or strings with a unit: B, kB, MB, GB (powers of 1000) or KiB, MiB, GiB.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pema_export.errors import PemaError
from pema_export.manifest import Manifest
from pema_export.size import SizeReport

UNITS = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_LIMIT_KEYS = ("max_bytes", "max_deflate_bytes")


class BudgetError(PemaError):
    """A budget or baseline file is malformed or does not fit the bundle."""


@dataclass(frozen=True)
class Limit:
    max_bytes: int | None = None
    max_deflate_bytes: int | None = None


@dataclass
class Budget:
    total: Limit = field(default_factory=Limit)
    parts: dict[str, Limit] = field(default_factory=dict)
    files: dict[str, Limit] = field(default_factory=dict)
    source: str = ""


def parse_size(value, where: str) -> int:
    """An integer byte count, or a string like "12.5 MB" / "40MiB"; anything else names the key and the unit."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match:
            number, unit = match.groups()
            if unit == "":
                unit = "B"
            if unit not in UNITS:
                raise BudgetError(f"{where}: unknown unit {unit!r} in {value!r} (use one of {', '.join(UNITS)})")
            return int(float(number.replace("_", "")) * UNITS[unit])
    raise BudgetError(f"{where}: {value!r} is not a size (an integer of bytes or a string like \"12 MB\")")


def load_budget(path: str | Path) -> Budget:
    path = Path(path)
    if not path.is_file():
        raise BudgetError(f"budget file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BudgetError(f"budget file {path} is not valid TOML: {exc}") from None
    return parse_budget(data, str(path))


def parse_budget(data: dict, source: str) -> Budget:
    from pema_export.size import PARTS

    known_parts = (*PARTS, "graph_structure", "tokenizer", "metadata")
    budget = Budget(source=source)
    total = {}
    for key, value in data.items():
        if key in _LIMIT_KEYS:
            total[key] = parse_size(value, f"{source}: {key}")
        elif key == "parts":
            for part, limit in _table(value, f"{source}: [parts]").items():
                if part not in known_parts:
                    raise BudgetError(f"{source}: unknown part {part!r} in [parts] (known: {', '.join(known_parts)})")
                budget.parts[part] = _limit(limit, f"{source}: parts.{part}")
        elif key == "files":
            for name, limit in _table(value, f"{source}: [files]").items():
                budget.files[name] = _limit(limit, f"{source}: files.{name}")
        else:
            raise BudgetError(f"{source}: unknown key {key!r} (known: max_bytes, max_deflate_bytes, parts, files)")
    budget.total = Limit(**total)
    return budget


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise BudgetError(f"{where} must be a table")
    return value


def _limit(value, where: str) -> Limit:
    if isinstance(value, dict):
        for key in value:
            if key not in _LIMIT_KEYS:
                raise BudgetError(f"{where}: unknown key {key!r} (known: {', '.join(_LIMIT_KEYS)})")
        return Limit(**{key: parse_size(v, f"{where}.{key}") for key, v in value.items()})
    return Limit(max_bytes=parse_size(value, where))


def load_baseline(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise BudgetError(f"baseline manifest not found: {path}")
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BudgetError(f"baseline {path} is not a JSON manifest") from None
    if not isinstance(baseline, dict) or not isinstance(baseline.get("files"), dict):
        raise BudgetError(f"baseline {path} is not a pema-manifest.json (no 'files')")
    return Manifest.from_json(baseline)


def parse_tolerance(text: str) -> float:
    """"2%" or "0.02" -> 0.02."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise BudgetError(f"--tolerance {text!r} is not a percentage like 2%") from None
    if not 0 <= value < math.inf:
        raise BudgetError(f"--tolerance {text!r} must be a percentage of at least 0%")
    return value


def check_bundle(report: SizeReport, budget: Budget | None = None, baseline: Manifest | None = None, tolerance: float = 0.0) -> list[str]:
    """One line per violation: the part, its size, the limit, and the growth since the baseline."""
    budget = budget or Budget()
    violations: list[str] = []
    manifest = report.manifest
    target_limit = (manifest.target or {}).get("max_bytes") if manifest else None
    if isinstance(target_limit, int):
        _over(violations, "bundle (target max_bytes)", report.total_bytes, target_limit, "")

    if baseline is not None and manifest is not None:
        _check_same_model(manifest, baseline)
    old_files = {name: entry["bytes"] for name, entry in (baseline.files if baseline else {}).items()}
    old_total = sum(old_files.values()) if old_files else None

    def growth(new: int, old: int | None) -> str:
        return "" if not old else f" ({(new - old) / old:+.1%} since baseline)"

    sizes = {f.name: f for f in report.files}
    _over(violations, "bundle", report.total_bytes, budget.total.max_bytes, growth(report.total_bytes, old_total))
    _over(violations, "bundle (deflated)", report.total_deflate_bytes, budget.total.max_deflate_bytes, "")
    parts, parts_deflate = report.parts(), report.parts(deflated=True)
    for part, limit in budget.parts.items():
        _over(violations, part, parts[part], limit.max_bytes, "")
        _over(violations, f"{part} (deflated)", parts_deflate[part], limit.max_deflate_bytes, "")
    for name, limit in budget.files.items():
        if name not in sizes:
            violations.append(f"{name}: in the budget but not in the bundle")
            continue
        _over(violations, name, sizes[name].size_bytes, limit.max_bytes, growth(sizes[name].size_bytes, old_files.get(name)))
        _over(violations, f"{name} (deflated)", sizes[name].deflate_bytes, limit.max_deflate_bytes, "")

    for name, old in sorted(old_files.items()):
        if name not in sizes:
            continue
        new = sizes[name].size_bytes
        if new > old * (1 + tolerance):
            violations.append(f"{name}: {new:,} bytes grew {(new - old) / old:+.1%} since baseline ({old:,} bytes), tolerance {tolerance:.1%}")
    return violations


def _over(violations: list[str], what: str, size: int, limit: int | None, growth: str) -> None:
    if limit is not None and size > limit:
        violations.append(f"{what}: {size:,} bytes > limit {limit:,}{growth}")


def _check_same_model(manifest: Manifest, baseline: Manifest) -> None:
    for key in ("source", "task"):
        new, old = (getattr(m.model, key) if m.model else None for m in (manifest, baseline))
        if new and old and new != old:
            raise BudgetError(f"baseline is from another model ({key} {old!r}, this bundle: {new!r})")
    new_vocab, old_vocab = (m.vocab.original if m.vocab else None for m in (manifest, baseline))
    if new_vocab and old_vocab and new_vocab != old_vocab:
        raise BudgetError(f"baseline is from another model (original vocabulary {old_vocab:,}, this bundle: {new_vocab:,})")

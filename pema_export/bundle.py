"""Write a bundle atomically: everything goes to a staging folder beside ``--out`` and moves into place only
after verification passed, so a failed or interrupted run leaves an earlier bundle intact and no partial files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pema_export.errors import OutputError

MANIFEST_NAME = "pema-manifest.json"


def check_output_path(out: Path) -> None:
    """Fail before any work when ``--out`` cannot become a model file in a writable folder."""
    if out.suffix != ".onnx":
        raise OutputError(f"--out {out}: the model file name must end in .onnx")
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; give the model file path, e.g. {out / 'model.onnx'}")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {out}: cannot write in {existing}")


class StagedBundle:
    """A staging folder that becomes the bundle on ``commit``; removed on any failure (use as a context manager)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self._created_dirs: list[Path] = []
        missing = out_dir
        while not missing.exists():
            self._created_dirs.append(missing)
            missing = missing.parent
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=".pema-staging-", dir=out_dir))
        except OSError as exc:
            raise OutputError(f"cannot write in {out_dir}: {exc.strerror}") from None
        self.committed = False

    def path(self, name: str) -> Path:
        return self.staging / name

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())

    def file_entries(self) -> dict[str, dict]:
        return {name: file_entry(self.staging / name) for name in self.files()}

    def write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
        self.path(MANIFEST_NAME).write_text(text, encoding="utf-8")

    def commit(self) -> list[Path]:
        """Move every staged file into the bundle folder, the manifest last, each by an atomic rename."""
        names = sorted(self.files(), key=lambda n: n == MANIFEST_NAME)
        placed = []
        for name in names:
            target = self.out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / name, target)
            placed.append(target)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.committed = True
        return placed

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self._created_dirs:
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "StagedBundle":
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            self.discard()


def file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}

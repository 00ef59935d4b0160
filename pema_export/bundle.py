"""Write a bundle atomically: everything goes to a staging folder beside ``--out`` and moves into place only
after verification passed, so a failed or interrupted run leaves an earlier bundle intact and no partial files.

A staging folder (``.pema-staging-*`` in the bundle's folder) holds ``owner.json`` (the pid of the run that owns it),
``bundle/`` (the files to ship) and ``work/`` (every stage's scratch files). The owner holds an flock on it and on the
bundle folder for its whole run, so:

- a second export to the same folder is refused in one line before any work;
- the next export removes staging folders whose owner is gone (killed runs leave nothing behind for long);
- the move into place first writes ``committing.json``; a run killed during the move leaves it, and every reader
  (``size``, ``check``, the pytest plugin, ``check_complete``) says the bundle is incomplete, while the next export
  finishes the move (its files were all verified) before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pema_export.errors import IncompleteBundleError, OutputError

try:
    import fcntl
except ImportError:  # not a POSIX system: no locks, so concurrent runs are not detected there
    fcntl = None

MANIFEST_NAME = "pema-manifest.json"
STAGING_PREFIX = ".pema-staging-"
OWNER_NAME = "owner.json"
COMMITTING_NAME = "committing.json"
# Tests only: the path of a file to create once the first file has moved into place, after which the commit waits
# (to be killed inside the window it guards).
PAUSE_IN_COMMIT_ENV = "PEMA_EXPORT_TEST_PAUSE_IN_COMMIT"


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
    """A staging folder that becomes the bundle on ``commit``; removed on any failure (use as a context manager).

    While it is open, ``tempfile`` puts every stage's temporary files in its ``work`` folder."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self._created_dirs: list[Path] = []
        self._locks: list[int] = []
        self._saved_tempdir = None
        missing = out_dir
        while not missing.exists():
            self._created_dirs.append(missing)
            missing = missing.parent
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write in {out_dir}: {exc.strerror}") from None
        folder_lock = _try_lock(out_dir)
        if folder_lock is None:  # the other run may have created the folder too: leave it
            raise OutputError(f"another pema-export{_live_owner(out_dir)} is writing a bundle to {out_dir}; "
                              "wait for it to finish, or choose another --out")
        self._locks.append(folder_lock)
        try:
            recover(out_dir)
            self.root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
            self._locks.append(_try_lock(self.root))
            (self.root / OWNER_NAME).write_text(json.dumps({"pid": os.getpid()}) + "\n", encoding="utf-8")
            self.staging = self.root / "bundle"
            self.work = self.root / "work"
            self.staging.mkdir()
            self.work.mkdir()
        except OSError as exc:
            self.discard()
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
        """Move every staged file into the bundle folder, the manifest last, each by an atomic rename.

        Files an earlier bundle's manifest lists and this one lacks are removed, so no stale file (a quantized model
        of another target) stays beside the new tokenizer. ``committing.json`` is written first: a run killed during
        the move leaves it, readers refuse the bundle, and the next export finishes the move."""
        names = self.files()
        stale = sorted(set(_manifest_files(self.out_dir / MANIFEST_NAME)) - set(names))
        _write_atomically(self.root / COMMITTING_NAME, json.dumps({"remove": stale}) + "\n")
        _move_into_place(self.root, self.out_dir)
        placed = [self.out_dir / name for name in sorted(names, key=lambda n: n == MANIFEST_NAME)]
        self.committed = True
        self._close()
        return placed

    def discard(self) -> None:
        """Remove the staging folder (and the folders this run created), unless a move into place had begun: then
        finish it, or leave it for readers to detect and the next export to finish."""
        root = getattr(self, "root", None)
        if root is not None and (root / COMMITTING_NAME).exists():
            try:
                _move_into_place(root, self.out_dir)
            except BaseException:
                self._release()
                raise
        self._close()
        for folder in self._created_dirs:
            try:
                folder.rmdir()
            except OSError:
                break

    def _close(self) -> None:
        root = getattr(self, "root", None)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        for fd in reversed(self._locks):
            if fd is not None:
                os.close(fd)  # closing the descriptor releases its flock
        self._locks.clear()

    def __enter__(self) -> "StagedBundle":
        self._saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(self.work)
        return self

    def __exit__(self, *exc_info) -> None:
        tempfile.tempdir = self._saved_tempdir
        if not self.committed:
            self.discard()


def recover(out_dir: Path) -> None:
    """Staging folders in ``out_dir`` whose run is gone: finish an interrupted move into place, remove the rest.
    Call it holding the folder's lock."""
    for staging in _staging_folders(out_dir):
        lock = _try_lock(staging)
        if lock is None:
            continue  # its owner is alive
        try:
            if (staging / COMMITTING_NAME).exists():
                _move_into_place(staging, out_dir)
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            os.close(lock)


def check_complete(bundle_dir: Path) -> None:
    """Raise IncompleteBundleError when ``bundle_dir`` is in the middle of a move into place, or a file differs from
    what its manifest records (bytes and sha256). A folder without a manifest is not checked."""
    for staging in _staging_folders(bundle_dir):
        if (staging / COMMITTING_NAME).exists():
            if _try_lock_briefly(staging):
                raise IncompleteBundleError(
                    f"bundle {bundle_dir} is incomplete: an export{_owner(staging)} was killed while moving its files "
                    "into place; run the export again (it finishes the move first)")
            raise IncompleteBundleError(f"bundle {bundle_dir} is being written by pema-export{_owner(staging)}; "
                                        "try again when it has finished")
    manifest_path = bundle_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
        entries = [(str(name), entry["bytes"], entry["sha256"]) for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IncompleteBundleError(f"bundle {bundle_dir}: {MANIFEST_NAME} is not a readable manifest (no file list)") from None
    for name, size, sha256 in entries:
        path = bundle_dir / name
        if not path.is_file():
            raise IncompleteBundleError(f"bundle {bundle_dir} is incomplete: {name}, listed in {MANIFEST_NAME}, is missing")
        found = file_entry(path)
        if (found["bytes"], found["sha256"]) != (size, sha256):
            raise IncompleteBundleError(
                f"bundle {bundle_dir} is mixed: {name} is not the file {MANIFEST_NAME} records ({found['bytes']:,} bytes, "
                f"sha256 {found['sha256'][:12]}; recorded {size:,} bytes, {str(sha256)[:12]}); export it again")


def is_staging(path: Path, bundle_dir: Path) -> bool:
    """Whether ``path`` (inside ``bundle_dir``) belongs to a staging folder, which no reader should count."""
    return any(part.startswith(STAGING_PREFIX) for part in path.relative_to(bundle_dir).parts)


def file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _move_into_place(root: Path, out_dir: Path) -> None:
    """The move ``committing.json`` in ``root`` describes; safe to repeat after an interruption (each step is a
    rename or an unlink, and the manifest goes last)."""
    staging, manifest = root / "bundle", root / "bundle" / MANIFEST_NAME
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file() and p != manifest)
    if not manifest.exists() and not names:
        return  # the manifest moved last: the bundle is complete
    stale = json.loads((root / COMMITTING_NAME).read_text(encoding="utf-8"))["remove"]
    # the earlier manifest must never describe a mix of its files and these
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for name in stale:
        _remove_inside(out_dir, name)
    for index, name in enumerate(names):
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        if index == 0:
            _pause_for_tests()
    if manifest.exists():  # a library caller may stage model files only (stages.ship), with no manifest
        os.replace(manifest, out_dir / MANIFEST_NAME)


def _remove_inside(out_dir: Path, name: str) -> None:
    """Remove an earlier bundle's file ``name`` (and folders it leaves empty), never anything outside ``out_dir``."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return
    (out_dir / relative).unlink(missing_ok=True)
    for parent in relative.parents:
        if parent == Path("."):
            break
        try:
            (out_dir / parent).rmdir()
        except OSError:
            break


def _manifest_files(path: Path) -> list[str]:
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files") or {}
        return [str(name) for name in files]
    except (OSError, ValueError, AttributeError):
        return []


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _staging_folders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir())
    except OSError:
        return []


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on the folder ``path``, held until the returned descriptor is closed; None when held."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _try_lock_briefly(path: Path) -> bool:
    """Whether nobody holds ``path``'s lock (its owner is gone); takes it and lets go at once."""
    try:
        fd = _try_lock(path)
    except OSError:
        return False
    if fd is None:
        return False
    os.close(fd)
    return True


def _owner(staging: Path) -> str:
    try:
        return f" (pid {int(json.loads((staging / OWNER_NAME).read_text(encoding='utf-8'))['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _live_owner(out_dir: Path) -> str:
    return next((_owner(s) for s in _staging_folders(out_dir) if not _try_lock_briefly(s)), "")


def _pause_for_tests() -> None:
    signal_file = os.environ.get(PAUSE_IN_COMMIT_ENV)
    if signal_file:
        Path(signal_file).touch()
        time.sleep(120)

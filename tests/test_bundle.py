"""Crashes leave nothing behind (issue 15): staging folders of dead runs are removed by the next run, a second export
to the same folder is refused while the first runs, and a run killed while moving files into place is detected by
every reader and finished by the next export. The kills are real SIGKILLs of separate processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SAMPLES, sample_head
from pema_export.bundle import COMMITTING_NAME, PAUSE_IN_COMMIT_ENV, STAGING_PREFIX, StagedBundle, check_complete
from pema_export.cli import main
from pema_export.errors import IncompleteBundleError, OutputError
from pema_export.timings import TIMINGS_NAME


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def staging_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"{STAGING_PREFIX}*"))


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pema-export: error: "), captured.err
    return lines[0]


def test_a_killed_runs_staging_folder_is_ignored_by_readers_and_removed_by_the_next_run(tmp_path, tiny_bundle, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for file in tiny_bundle.iterdir():
        (bundle / file.name).write_bytes(file.read_bytes())
    ready = tmp_path / "ready"
    # a run that has staged a partial model and scratch files, then dies without any chance to clean up
    script = (
        "import sys, tempfile\n"
        "from pathlib import Path\n"
        "from pema_export.bundle import StagedBundle\n"
        "with StagedBundle(Path(sys.argv[1])) as staged:\n"
        "    staged.path('model.onnx').write_bytes(b'partial' * 1000)\n"
        "    Path(tempfile.mkdtemp(), 'fp32.onnx').write_bytes(b'scratch')\n"
        "    Path(sys.argv[2]).touch()\n"
        "    __import__('time').sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", script, str(bundle), str(ready)], env=env, stderr=subprocess.PIPE, text=True)
    wait_for(ready, process)
    kill(process)
    (left,) = staging_folders(bundle)
    assert json.loads((left / "owner.json").read_text())["pid"] == process.pid
    assert sorted(p.name for p in (left / "work").rglob("*.onnx")) == ["fp32.onnx"]  # scratch files stayed in it

    # readers do not count it and do not mind it
    assert main(["size", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_bytes"] == sum(f.stat().st_size for f in tiny_bundle.iterdir() if f.name != TIMINGS_NAME)
    assert main(["check", str(bundle)]) == 0
    check_complete(bundle)

    # the next run removes it, and leaves the bundle as it was when it does not commit
    with StagedBundle(bundle) as staged:
        assert staging_folders(bundle) == [staged.root]
    assert staging_folders(bundle) == []
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == {p.name: p.read_bytes() for p in tiny_bundle.iterdir()}


def test_a_kill_while_files_move_into_place_is_detected_by_every_reader_and_finished_by_the_next_export(
        tmp_path, tiny_bert, capsys, pytester):
    out = tmp_path / "app" / "model.onnx"
    # the earlier bundle: another target's layout (onnx/model.onnx), so its files are not the next bundle's names
    assert main(["--model", str(tiny_bert), "--corpus", str(SAMPLES / "search_texts.txt"), "--out", str(out),
                 "--target", "web", "--quantize", "none", "--quiet"]) == 0
    assert (out.parent / "onnx" / "model.onnx").is_file()
    corpus = sample_head(tmp_path, "app_texts.txt", 60, name="corpus.txt")
    paused = tmp_path / "paused"
    env = {**os.environ, PAUSE_IN_COMMIT_ENV: str(paused)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pema_export", "--model", str(tiny_bert), "--corpus", str(corpus), "--out", str(out),
         "--epochs", "1", "--quantize", "none", "--quiet"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        wait_for(paused, process)  # the first file has moved; the rest and the manifest have not
        # while it runs: a second export to the same folder is refused before any work, naming the first
        second = tmp_path / "second.txt"
        second.write_text("where is my order\n")
        line = one_error_line(capsys, ["--model", str(tiny_bert), "--corpus", str(second), "--out", str(out), "--quiet"])
        assert line == (f"pema-export: error: another pema-export (pid {process.pid}) is writing a bundle to {out.parent}; "
                        "wait for it to finish, or choose another --out")
        with pytest.raises(IncompleteBundleError, match=f"being written by pema-export \\(pid {process.pid}\\)"):
            check_complete(out.parent)
    finally:
        kill(process)

    # the earlier manifest went first, so nothing describes the mix; every reader says so in one line
    assert not (out.parent / "pema-manifest.json").exists()
    message = f"bundle {out.parent} is incomplete: an export (pid {process.pid}) was killed while moving its files into place"
    assert one_error_line(capsys, ["size", str(out.parent)]).startswith(f"pema-export: error: {message}")
    assert one_error_line(capsys, ["check", str(out.parent)]).startswith(f"pema-export: error: {message}")
    pytester.makepyfile(f"""
        def test_fits(pema_bundle):
            pema_bundle(r"{out}").assert_within()
    """)
    result = pytester.runpytest("-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in result.stdout.str()

    # the next export finishes the killed one's move (its files were verified) before its own work: even when it
    # then fails, the folder holds the killed run's complete bundle and no staging folder
    (staging,) = staging_folders(out.parent)
    assert (staging / COMMITTING_NAME).is_file()
    assert one_error_line(capsys, ["--model", str(tiny_bert), "--corpus", str(tmp_path / "none.txt"), "--out", str(out)])
    assert staging_folders(out.parent) == [staging]  # refused in prepare, before it claims the folder
    with StagedBundle(out.parent):
        pass
    assert staging_folders(out.parent) == []
    check_complete(out.parent)
    manifest = json.loads((out.parent / "pema-manifest.json").read_text())
    assert manifest["corpus"]["files"] == ["corpus.txt"] and manifest["target"]["name"] == "cpu"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([*manifest["files"], "pema-manifest.json", TIMINGS_NAME])
    assert not (out.parent / "onnx").exists()  # the earlier bundle's files were removed, not left beside the new ones
    assert main(["size", str(out.parent)]) == 0


def test_a_reader_names_a_file_that_is_not_the_one_the_manifest_records(tmp_path, tiny_bundle):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for file in tiny_bundle.iterdir():
        (mixed / file.name).write_bytes(file.read_bytes())
    check_complete(mixed)
    (mixed / "config.json").write_text((mixed / "config.json").read_text().replace("}", ' , "x": 1}', 1))
    with pytest.raises(IncompleteBundleError, match=r"bundle .* is mixed: config.json is not the file pema-manifest.json records"):
        check_complete(mixed)
    (mixed / "config.json").unlink()
    with pytest.raises(IncompleteBundleError, match="config.json, listed in pema-manifest.json, is missing"):
        check_complete(mixed)


def test_the_lock_is_on_the_folder_and_goes_with_the_process(tmp_path):
    """The flock dies with its owner: no lock file to go stale, nothing left in the folder."""
    folder = tmp_path / "out"
    with StagedBundle(folder):
        with pytest.raises(OutputError, match=f"another pema-export \\(pid {os.getpid()}\\) is writing a bundle to {folder}"):
            StagedBundle(folder)
    with StagedBundle(folder):
        pass
    assert not folder.exists()  # this run made the folder, so its failure removes it

"""pema-export tried from outside (issue 15): bad input to every option of every subcommand, corpora from outside,
SIGKILLs at every stage of an export (the move into place included), and two exports racing into one folder.
Prints the markdown tables docs/reliability.md holds.

    .venv/bin/python benchmarks/reliability.py [--corpora 40] [--kills 10] [--races 3]

Tiny models built here (tests/conftest.py's), no network. Bad input runs in-process through `pema_export.cli.main`,
the console script's entry point (an exception escaping it is the traceback a user would see); kills and races run
the command in separate processes, each with its own TMPDIR so anything left outside the bundle folder is counted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import bad_inputs  # noqa: E402  (tests/: the cases the test suite walks)
from conftest import SAMPLES, save_tiny_model, train_wordpiece, urgent_or_normal  # noqa: E402

from pema_export.bundle import COMMITTING_NAME, PAUSE_IN_COMMIT_ENV, STAGING_PREFIX, check_complete  # noqa: E402
from pema_export.cli import main  # noqa: E402
from pema_export.errors import IncompleteBundleError  # noqa: E402

# stderr lines an export logs as it goes (pipeline.py), in order: a kill is aimed just after one of them
STAGES = ["scanning", "fine-tuning", "held-out accuracy", "exporting", "verifying", "building the"]


def call(argv: list[str]) -> tuple[int | None, list[str], str | None]:
    """(exit code, stderr lines, traceback or None) of one in-process run."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except BaseException:  # noqa: BLE001 - any escape is what this counts
        return None, err.getvalue().splitlines(), traceback.format_exc()
    return code, err.getvalue().splitlines(), None


def scratch(tmpdir: Path) -> int:
    """Files and folders the runs left in their TMPDIR, but onnxruntime's own ".ses" (one file it rewrites, not ours)."""
    return sum(1 for path in tmpdir.rglob("*") if path.relative_to(tmpdir) != Path(".ses"))


def listing(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for folder in folders for p in sorted(folder.rglob("*"))}


def one_line(code, lines) -> bool:
    return code == 2 and len(lines) == 1 and lines[0].startswith("pema-export: error: ")


def bad_input(work: Path, tiny_bert: Path, bundle: Path) -> dict[str, Counter]:
    results: dict[str, Counter] = defaultdict(Counter)
    for index, case in enumerate(bad_inputs.cases()):
        folder = work / f"case-{index}"
        folder.mkdir()
        inputs = bad_inputs.make_inputs(folder, tiny_bert, bundle)
        corpus = urgent_or_normal(folder, "app_texts.txt", 60, "corpus.txt")
        argv = bad_inputs.argv(case, inputs, tiny_bert, bundle, folder / "out" / "model.onnx", corpus)
        before = listing(folder, bundle)
        code, lines, trace = call(argv)
        tally = results[case.command]
        tally["cases"] += 1
        if trace:
            tally["tracebacks"] += 1
            print(f"TRACEBACK {case.id}\n{trace}", file=sys.stderr)
        elif not one_line(code, lines):
            tally["other outcome"] += 1
            print(f"NOT ONE LINE {case.id}: exit {code}: {lines[-3:]}", file=sys.stderr)
        if listing(folder, bundle) != before:
            tally["wrote something"] += 1
            print(f"WROTE {case.id}", file=sys.stderr)
        shutil.rmtree(folder)
    return results


def corpora(work: Path, tiny_bert: Path, examples: int) -> Counter:
    from hypothesis import HealthCheck, given, settings

    tally: Counter = Counter()

    def attempt(content: bytes, suffix: str) -> None:
        folder = Path(tempfile.mkdtemp(dir=work))
        path = folder / f"corpus{suffix}"
        path.write_bytes(content)
        out = folder / "out" / "model.onnx"
        code, lines, trace = call(["--model", str(tiny_bert), "--corpus", str(path), "--out", str(out), "--epochs", "1",
                                   "--quantize", "none", "--quiet"])
        tally["cases"] += 1
        if trace:
            tally["tracebacks"] += 1
            print(f"TRACEBACK corpus {suffix} {content[:80]!r}\n{trace}", file=sys.stderr)
        elif code == 0:
            try:
                check_complete(out.parent)
                manifest = json.loads((out.parent / "pema-manifest.json").read_text())
                verified = manifest["parity"]["tokenization_mismatches"] == 0 and manifest["parity"]["max_abs_diff"] <= 1e-4
                tally["verified bundle" if verified else "partial or mixed"] += 1
            except (IncompleteBundleError, OSError, KeyError):
                tally["partial or mixed"] += 1
        elif one_line(code, lines):
            tally["one error line"] += 1
            if out.parent.exists():
                tally["partial or mixed"] += 1
        else:
            tally["other outcome"] += 1
        shutil.rmtree(folder)

    for content, suffix in bad_inputs.FIXED_CORPORA:
        attempt(content, suffix)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(bad_inputs.corpus_files())
    def generated(corpus):
        attempt(*corpus)

    generated()
    return tally


def export_process(tiny_bert: Path, corpus: Path, out: Path, tmpdir: Path, pause_file: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if pause_file:
        env[PAUSE_IN_COMMIT_ENV] = str(pause_file)
    return subprocess.Popen([sys.executable, "-m", "pema_export", "--model", str(tiny_bert), "--corpus", str(corpus),
                             "--out", str(out), "--epochs", "4", "--lr", "5e-3", "--quantize", "none"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def bundle_state(folder: Path) -> str:
    """'complete' (files match the manifest), 'flagged' (a reader refuses it: a move into place was interrupted), or
    'unflagged partial or mixed' (what must never happen)."""
    try:
        check_complete(folder)
    except IncompleteBundleError as error:
        return "flagged" if "was killed while moving" in str(error) else "unflagged partial or mixed"
    return "complete" if (folder / "pema-manifest.json").is_file() else "unflagged partial or mixed"


def kills(work: Path, tiny_bert: Path, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    out = work / "killed" / "app" / "model.onnx"
    tmpdir = work / "killed-tmp"
    tmpdir.mkdir()
    first = urgent_or_normal(work, "app_texts.txt", 60, "first.txt")
    corpus = urgent_or_normal(work, "app_texts.txt", 120, "corpus.txt")
    assert call(["--model", str(tiny_bert), "--corpus", str(first), "--out", str(out), "--epochs", "4", "--lr", "5e-3",
                 "--quantize", "none", "--quiet"])[0] == 0
    moments = [*STAGES, "moving into place", "moving into place", "moving into place", "fine-tuning"][:count]
    record = {"kills": 0, "moments": [], "earlier bundle intact": 0, "flagged by readers": 0,
              "interrupted move finished by the next run": 0, "unflagged partial or mixed": 0, "finished before the kill": 0}
    for moment in moments:
        was = bundle_state(out.parent)
        before = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file() and STAGING_PREFIX not in str(p)}
        pause = work / f"paused-{record['kills']}" if moment == "moving into place" else None
        process = export_process(tiny_bert, corpus, out, tmpdir, pause)
        if pause:
            while not pause.exists() and process.poll() is None:
                time.sleep(0.02)
        else:
            for line in process.stderr:
                if line.startswith(f"pema-export: {moment}"):
                    time.sleep(rng.uniform(0, 0.3))
                    break
        if process.poll() is not None:
            record["finished before the kill"] += 1
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        record["kills"] += 1
        record["moments"].append(moment)
        state = bundle_state(out.parent)
        after = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file() and STAGING_PREFIX not in str(p)}
        if state == "flagged":
            record["flagged by readers"] += 1
            code, lines, _ = call(["size", str(out.parent)])
            assert one_line(code, lines) and "incomplete" in lines[0], lines
        elif state == "complete" and was == "complete" and after == before:
            record["earlier bundle intact"] += 1
        elif state == "complete" and was == "flagged":  # this run finished the killed one's move before its own work
            record["interrupted move finished by the next run"] += 1
        else:
            record["unflagged partial or mixed"] += 1
    record["staging folders left by the kills"] = len(list(out.parent.glob(f"{STAGING_PREFIX}*")))
    record["scratch files outside the bundle folder"] = scratch(tmpdir)
    # the next export: finishes an interrupted move, removes the dead runs' folders, then does its own work
    final = export_process(tiny_bert, corpus, out, tmpdir)
    _, stderr = final.communicate()
    assert final.returncode == 0, stderr[-2000:]
    record["after the next export: staging folders"] = len(list(out.parent.glob(f"{STAGING_PREFIX}*")))
    record["after the next export: scratch files outside"] = scratch(tmpdir)
    record["after the next export: bundle"] = bundle_state(out.parent)
    return record


def races(work: Path, tiny_bert: Path, rounds: int) -> Counter:
    tally: Counter = Counter()
    corpus = urgent_or_normal(work, "app_texts.txt", 120, "race.txt")
    for round_ in range(rounds):
        out = work / f"race-{round_}" / "model.onnx"
        tmpdir = work / f"race-tmp-{round_}"
        tmpdir.mkdir()
        pair = [export_process(tiny_bert, corpus, out, tmpdir) for _ in range(2)]
        results = [(process.wait(), process.stderr.read().splitlines()) for process in pair]
        tally["rounds"] += 1
        codes = sorted(code for code, _ in results)
        refused = [lines for code, lines in results if code == 2]
        if codes == [0, 2] and len(refused[0]) == 1 and "another pema-export (pid" in refused[0][0]:
            tally["one wrote, the other refused in one line"] += 1
        elif codes == [0, 0]:
            tally["did not overlap (both wrote, one after the other)"] += 1
        else:
            tally["other outcome"] += 1
            print(f"RACE {codes}: {[lines[-2:] for _, lines in results]}", file=sys.stderr)
        state = bundle_state(out.parent)
        tally["complete bundle after" if state == "complete" else "partial or mixed bundle after"] += 1
        tally["leftovers"] += len(list(out.parent.glob(f"{STAGING_PREFIX}*"))) + scratch(tmpdir)
    return tally


def main_(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=int, default=40, help="generated corpora (plus the fixed ones)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--races", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="pema-reliability-"))
    try:
        tiny_bert = save_tiny_model(work / "tiny-bert", "bert", train_wordpiece())
        bundle = work / "good" / "model.onnx"
        assert call(["--model", str(tiny_bert), "--corpus", str(SAMPLES / "search_texts.txt"), "--out", str(bundle), "--quiet"])[0] == 0
        walked = bad_input(work, tiny_bert, bundle.parent)
        fuzzed = corpora(work, tiny_bert, args.corpora)
        killed = kills(work, tiny_bert, args.kills, args.seed)
        raced = races(work, tiny_bert, args.races)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(walked, fuzzed, killed, raced, time.monotonic() - started, argv if argv is not None else sys.argv[1:])


def report(walked, fuzzed, killed, raced, seconds: float, argv: list[str]) -> None:
    command = " ".join([".venv/bin/python benchmarks/reliability.py", *argv])
    print(f"`{command}` ({seconds / 60:.1f} min)\n")
    print("| subcommand | cases tried | one error line, exit 2 | tracebacks | other outcome | wrote or left a file |")
    print("|---|---:|---:|---:|---:|---:|")
    for command_name in ("export", "scan", "size", "check", "targets"):
        t = walked[command_name]
        ok = t["cases"] - t["tracebacks"] - t["other outcome"]
        print(f"| `{command_name}`: every option, a bad value | {t['cases']} | {ok} | {t['tracebacks']} | {t['other outcome']} | {t['wrote something']} |")
    print(f"| `export`: corpora from outside | {fuzzed['cases']} | {fuzzed['one error line']} (and {fuzzed['verified bundle']} verified bundles) "
          f"| {fuzzed['tracebacks']} | {fuzzed['other outcome']} | {fuzzed['partial or mixed']} |")
    print()
    print("| SIGKILL during an export over an earlier bundle | count |")
    print("|---|---:|")
    print(f"| kills (after: {', '.join(killed['moments'])}) | {killed['kills']} |")
    for key in ("earlier bundle intact", "flagged by readers", "interrupted move finished by the next run",
                "unflagged partial or mixed", "finished before the kill", "staging folders left by the kills",
                "scratch files outside the bundle folder", "after the next export: staging folders",
                "after the next export: scratch files outside", "after the next export: bundle"):
        print(f"| {key} | {killed[key]} |")
    print()
    print("| two exports to the same --out at once | count |")
    print("|---|---:|")
    for key in ("rounds", "one wrote, the other refused in one line", "did not overlap (both wrote, one after the other)",
                "other outcome", "complete bundle after", "partial or mixed bundle after", "leftovers"):
        print(f"| {key} | {raced[key]} |")
    tracebacks = sum(t["tracebacks"] for t in walked.values()) + fuzzed["tracebacks"]
    partial = fuzzed["partial or mixed"] + killed["unflagged partial or mixed"] + raced["partial or mixed bundle after"]
    leftovers = (killed["after the next export: staging folders"] + killed["after the next export: scratch files outside"]
                 + raced["leftovers"])
    print(f"\ntracebacks {tracebacks}; partial or mixed bundles {partial}; leftovers after {killed['kills']} kills and the next export {leftovers}")


if __name__ == "__main__":
    main_()

import subprocess
import sys
import zipfile

from conftest import REPO, run_cli


def test_two_processes_with_the_same_inputs_and_seed_write_identical_bytes(tmp_path, tiny_bert, labelled_corpus, monkeypatch):
    """Two separate runs of the installed command, each with its own hash seed (set ordering, dict iteration of
    hashed keys) and its own process state: every file of the two bundles, byte for byte."""
    bundles = []
    for run, hash_seed in (("first", "1"), ("second", "2")):
        monkeypatch.setenv("PYTHONHASHSEED", hash_seed)
        out = tmp_path / run / "model.onnx"
        done = run_cli("--model", tiny_bert, "--corpus", labelled_corpus, "--out", out, "--epochs", "1",
                       "--seed", "3", "--quiet")
        assert done.returncode == 0, done.stderr
        # every file but the export's wall-clock timings, which lie beside the manifest and ship in no app
        bundles.append({path.name: path.read_bytes() for path in sorted(out.parent.iterdir()) if path.name != "pema-timings.json"})
    assert sorted(bundles[0]) == ["config.json", "model.onnx", "pema-manifest.json", "tokenizer.json", "tokenizer_config.json"]
    assert bundles[0] == bundles[1]


def test_targets_ship_inside_the_wheel(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("pema_export-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert "pema_export/targets/cpu.toml" in names
    # the unpacked wheel alone, run from elsewhere, finds its profiles
    probe = "from pema_export.profiles import load_target; print(load_target('cpu').name)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"

import subprocess
import sys
import zipfile

from pema_export.cli import main
from conftest import REPO, SAMPLES


def test_same_inputs_and_seed_give_identical_bytes(tmp_path, tiny_bert):
    outputs = []
    for run in ("first", "second"):
        out = tmp_path / run / "model.onnx"
        args = ["--model", str(tiny_bert), "--corpus", str(SAMPLES / "app_texts.txt"), "--out", str(out),
                "--epochs", "1", "--seed", "3", "--quiet"]
        assert main(args) == 0
        outputs.append({name: (out.parent / name).read_bytes() for name in ("model.onnx", "tokenizer.json", "pema-manifest.json")})
    assert outputs[0] == outputs[1]


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

"""Where training runs (--device, --precision, data-parallel launches) and the hand-over to the CPU after it.

No GPU is needed: the CUDA decisions are checked against a simulated torch.cuda; the training loop, and the hand-over
of a model left on another device, on PyTorch's lazy device (which, like CUDA, refuses CPU tensors: export from it
fails the way export from a GPU did); and data parallelism with two real processes over gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TRAINING_TEXT, run_cli, sample_head, save_tiny_model
from pema_export.cli import main
from pema_export.devices import Placement, Processes, resolve_placement, share_rows, share_weight, to_cpu_fp32
from pema_export.errors import DeviceError
from pema_export.train import TrainOptions, TrainReport

LAUNCH = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


@pytest.fixture()
def two_gpus(monkeypatch):
    """torch.cuda as a machine with two GPUs of ``capability`` (default 9.0, an H100/H200) would answer."""
    capability = {"value": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    return capability


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without CUDA")
def test_auto_trains_on_the_cpu_without_a_gpu_and_says_why():
    placement = resolve_placement("auto", "fp32", environ={})
    assert placement.device == torch.device("cpu")
    assert placement.reason.startswith("--device auto: ") and "trained on the CPU" in placement.reason
    assert ("has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible") in placement.reason


def test_auto_takes_a_visible_gpu_and_each_process_of_a_launch_its_own(two_gpus):
    one = resolve_placement("auto", "fp32", environ={})
    assert one.device == torch.device("cuda", 0) and one.processes == Processes()
    assert one.reason == "--device auto: 2 CUDA GPU(s) visible; took cuda:0 (NVIDIA H200)"
    second = resolve_placement("auto", "bf16", environ=LAUNCH)
    assert second.device == torch.device("cuda", 1) and second.precision == "bf16"
    assert second.processes == Processes(count=2, rank=1, local_rank=1) and not second.processes.is_main
    assert resolve_placement("cuda", "fp32", environ=LAUNCH).device == torch.device("cuda", 1)
    assert resolve_placement("cuda:1", "fp32", environ={}).reason == "--device cuda:1: NVIDIA H200"


def test_a_gpu_the_launch_cannot_give_each_process_is_one_line(two_gpus):
    with pytest.raises(DeviceError, match="--device cuda:1: in a launch of 2 processes each process takes the GPU of its local rank"):
        resolve_placement("cuda:1", "fp32", environ=LAUNCH)
    with pytest.raises(DeviceError, match="local rank 2 but this machine has 2 CUDA GPU"):
        resolve_placement("cuda", "fp32", environ={"WORLD_SIZE": "3", "RANK": "2", "LOCAL_RANK": "2"})
    with pytest.raises(DeviceError, match="--device cuda:2: only 2 CUDA device"):
        resolve_placement("cuda:2", "fp32", environ={})


def test_bf16_on_a_gpu_without_it_is_refused_and_fp16_is_not(two_gpus):
    two_gpus["value"] = (7, 5)  # a T4
    with pytest.raises(DeviceError, match=r"--precision bf16: NVIDIA H200 \(compute capability 7.5\) has no bf16; it needs 8.0"):
        resolve_placement("cuda", "bf16", environ={})
    assert resolve_placement("cuda", "fp16", environ={}).precision == "fp16"
    two_gpus["value"] = (8, 0)
    assert resolve_placement("cuda", "bf16", environ={}).precision == "bf16"


@pytest.mark.parametrize("precision, check", [("bf16", "_is_mkldnn_bf16_supported"), ("fp16", "_is_mkldnn_fp16_supported")])
def test_a_cpu_without_the_precision_is_refused_in_one_line(monkeypatch, capsys, tmp_path, labelled_corpus, precision, check):
    monkeypatch.setattr(torch.ops.mkldnn, check, lambda: False)
    with pytest.raises(DeviceError, match=f"--precision {precision}: this CPU has no {precision} instructions torch can use"):
        resolve_placement("cpu", precision, environ={})
    assert main(["--corpus", str(labelled_corpus), "--out", str(tmp_path / "b" / "model.onnx"), "--precision", precision]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pema-export: error: --precision {precision}:") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
    monkeypatch.undo()
    assert resolve_placement("cpu", precision, environ={}).precision == precision  # this machine: torch has both


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 17592186044416 bytes. Error code 12 (Cannot allocate memory)"),
], ids=["cuda", "cpu"])
def test_training_out_of_memory_is_one_line_that_says_what_to_lower(monkeypatch, capsys, tmp_path, tiny_bert, labelled_corpus,
                                                                    error):
    from pema_export import train

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(train, "_share_loss", no_memory)
    out = tmp_path / "b" / "model.onnx"
    assert main(["--model", str(tiny_bert), "--corpus", str(labelled_corpus), "--out", str(out), "--batch-size", "32",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pema-export: error: cpu ran out of memory training batches of 32 texts of "
                                                     "up to "), err
    assert err.endswith(" tokens in fp32: lower --batch-size or --max-length; nothing was written\n")
    assert not (tmp_path / "b").exists()
    # the model itself does not fit: smaller batches would not help, and the line does not say they would
    monkeypatch.setattr(train.Replicas, "wrap", no_memory)
    assert main(["--model", str(tiny_bert), "--corpus", str(labelled_corpus), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pema-export: error: cpu ran out of memory taking the model itself ("), err
    assert err.endswith(" MB of weights) before any training step: use a device with more memory, or --device cpu; "
                        "nothing was written\n") and not (tmp_path / "b").exists()
    # a GPU in fp32 is also told about bf16
    gpu = Placement(torch.device("cuda", 0), "--device cuda", "fp32")
    assert str(train._out_of_memory(gpu, TrainOptions(), train.EncodedSet([[1, 2, 3]], [0]))) == (
        "cuda:0 ran out of memory training batches of 16 texts of up to 3 tokens in fp32: lower --batch-size or "
        "--max-length, or train in --precision bf16 (or fp16); nothing was written")


def test_accelerate_launch_precision_is_the_default_and_a_contradiction_is_refused():
    assert resolve_placement("cpu", None, environ={}).precision == "fp32"
    assert resolve_placement("cpu", None, environ={"ACCELERATE_MIXED_PRECISION": "bf16"}).precision == "bf16"
    assert resolve_placement("cpu", "bf16", environ={"ACCELERATE_MIXED_PRECISION": "no"}).precision == "bf16"
    with pytest.raises(DeviceError, match="--precision fp32 but accelerate was launched with mixed_precision bf16"):
        resolve_placement("cpu", "fp32", environ={"ACCELERATE_MIXED_PRECISION": "bf16"})
    with pytest.raises(DeviceError, match="mixed_precision 'fp8' is not supported"):
        resolve_placement("cpu", None, environ={"ACCELERATE_MIXED_PRECISION": "fp8"})


def test_the_shares_of_a_global_batch_cover_it_once_and_their_weights_average_to_its_mean():
    for count in (2, 3, 4):
        for batch_size in range(1, 18):
            shares = [share_rows(batch_size, Processes(count, rank, rank)) for rank in range(count)]
            assert [i for rows in shares for i in range(batch_size)[rows]] == list(range(batch_size))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
            # DistributedDataParallel averages the N weighted share means: that must be the batch's mean
            weights = [share_weight(s.stop - s.start, batch_size, Processes(count, rank, rank)) for rank, s in enumerate(shares)]
            assert sum(weights) / count == pytest.approx(1.0)


@pytest.fixture(scope="module")
def lazy_device():
    """PyTorch's lazy-tensor device (TorchScript backend): a real device other than the CPU in every torch build."""
    try:
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        torch.zeros(1, device="lazy")
    except Exception as exc:  # not in this torch build
        pytest.skip(f"torch's lazy device is not available: {exc}")
    return torch.device("lazy")


def test_the_hand_over_brings_weights_to_the_cpu_in_fp32_and_keeps_integer_buffers(tiny_bert, lazy_device):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).to(device=lazy_device, dtype=torch.bfloat16)
    assert to_cpu_fp32(model) is model
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.float32)}
    position_ids = model.bert.embeddings.position_ids
    assert position_ids.device.type == "cpu" and position_ids.dtype == torch.int64


def test_a_model_trained_on_another_device_in_bf16_is_exported_and_verified_from_the_cpu(tmp_path, tiny_bert, labelled_corpus,
                                                                                       lazy_device, monkeypatch):
    """Issue 12's crash, on a CPU-only machine: training left the model on the GPU and optimum's export failed."""
    from pema_export import pipeline
    from pema_export.export import export_onnx
    from pema_export.profiles import load_target
    from pema_export.tasks import TASKS

    trained = {}

    def trained_elsewhere(model, train_set, eval_set, pad_id, options, **kwargs):
        model.to(device=lazy_device, dtype=torch.bfloat16)
        trained["model"] = model
        return TrainReport(epochs=1, train_size=len(train_set), eval_size=len(eval_set), eval_accuracy_per_epoch=[0.5],
                           eval_figures={"accuracy": 0.5}, placement=Placement(lazy_device, "a device other than the CPU", "bf16"))

    monkeypatch.setattr(pipeline, "fine_tune", trained_elsewhere)
    result = pipeline.run(pipeline.ExportOptions(corpus=[str(labelled_corpus)], out=str(tmp_path / "b" / "model.onnx"),
                                                 model=str(tiny_bert), quantize="none", save_full=str(tmp_path / "full")))
    training, parity = result.manifest.training, result.manifest.parity
    assert (training.device, training.precision, training.processes) == ("lazy", "bf16", 1)
    assert parity.tokenization_mismatches == 0 and parity.max_abs_diff <= parity.atol
    assert (tmp_path / "full" / "model.safetensors").is_file()
    # without the hand-over the export fails as it did on the GPU: this test can fail
    model = trained["model"].to(lazy_device)
    with pytest.raises(RuntimeError):
        export_onnx(model, TASKS["text-classification"], load_target("cpu"), tmp_path / "x.onnx")


@pytest.fixture()
def lazy_training(monkeypatch, lazy_device):
    """``--device lazy`` trains on PyTorch's lazy device, as ``--device cuda`` trains on a GPU.

    The lazy device refuses any operation that mixes its tensors with CPU tensors (``Input tensor is not a lazy
    tensor``), as CUDA refuses a CPU index: a batch, label or index the loop forgets to move fails the run. Its
    graphs grow until a step boundary, which PyTorch/XLA-style loops mark; here the learning-rate schedule's step (once
    per optimizer step) marks it."""
    import torch._lazy
    from pema_export import devices

    choose = devices._device
    monkeypatch.setattr(devices, "_device", lambda name, processes: (lazy_device, "the lazy device") if name == "lazy"
                        else choose(name, processes))
    schedule_step = torch.optim.lr_scheduler.LambdaLR.step

    def step_and_mark(self, *args, **kwargs):
        schedule_step(self, *args, **kwargs)
        torch._lazy.mark_step()

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", step_and_mark)


@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_training_on_a_device_other_than_the_cpu_runs_every_step_there_and_trains_the_cpu_model(
        tmp_path, tiny_bert_without_dropout, labelled_corpus, lazy_training, task):
    """The CPU's stand-in for issue 12's GPU run: the real loop (batches, labels, loss, clipping, AdamW, the
    per-epoch held-out figure) on a device other than the CPU, then the hand-over, export and verification. Without
    dropout the two devices compute the same numbers, so the model must equal the one trained on the CPU."""
    from pema_export import pipeline

    corpus = labelled_corpus if task == "text-classification" else sample_head(tmp_path, "slot_texts.jsonl", 64)
    results = {}
    for device in ("cpu", "lazy"):
        options = pipeline.ExportOptions(corpus=[str(corpus)], out=str(tmp_path / device / "model.onnx"),
                                         model=str(tiny_bert_without_dropout), quantize="none",
                                         save_full=str(tmp_path / f"{device}-full"), train=TrainOptions(epochs=1, lr=2e-3, device=device))
        results[device] = pipeline.run(options).manifest
    lazy, cpu = results["lazy"], results["cpu"]
    assert (lazy.training.device, cpu.training.device) == ("lazy", "cpu") and lazy.model.task == task
    assert lazy.parity.tokenization_mismatches == 0 and lazy.parity.max_abs_diff <= lazy.parity.atol
    assert lazy.training.evaluation == cpu.training.evaluation and lazy.training.evaluation
    pretrained = read_weights(tiny_bert_without_dropout)
    on_cpu, on_lazy = read_weights(tmp_path / "cpu-full"), read_weights(tmp_path / "lazy-full")
    moved = max((on_cpu[f"bert.{k}"] - pretrained[k]).abs().max().item() for k in pretrained if f"bert.{k}" in on_cpu)
    differ = max((on_cpu[k] - on_lazy[k]).abs().max().item() for k in on_cpu)
    assert moved > 1e-3 and differ < 1e-5, (moved, differ)


@pytest.fixture(scope="module")
def fp32_trained(tiny_bert):
    from test_train import tiny_training

    return tiny_training(tiny_bert, seed=3, epochs=1)[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_keeps_fp32_weights_and_changes_the_arithmetic(tiny_bert, fp32_trained, precision):
    from test_train import tiny_training

    fp32_model = fp32_trained
    model, report = tiny_training(tiny_bert, seed=3, epochs=1, precision=precision)
    assert report.placement.precision == precision and len(report.eval_accuracy_per_epoch) == 1
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    differences = [(a - b).abs().max().item() for a, b in zip(model.parameters(), fp32_model.parameters())]
    assert 0 < max(differences) < 0.05  # autocast ran (other rounding), and trained the same model closely


def test_a_process_other_than_the_first_trains_and_writes_nothing(tmp_path, tiny_bert, labelled_corpus, monkeypatch):
    from pema_export import pipeline

    for name, value in LAUNCH.items():
        monkeypatch.setenv(name, value)
    calls = []

    def trains(model, train_set, eval_set, pad_id, options, **kwargs):  # no process group in a unit test
        calls.append(len(train_set))
        return TrainReport(epochs=1, train_size=len(train_set), eval_size=len(eval_set), eval_accuracy_per_epoch=[0.5],
                           eval_figures={"accuracy": 0.5}, placement=resolve_placement("cpu", "fp32"))

    monkeypatch.setattr(pipeline, "fine_tune", trains)
    out = tmp_path / "b" / "model.onnx"
    options = pipeline.ExportOptions(corpus=[str(labelled_corpus)], out=str(out), model=str(tiny_bert),
                                     save_full=str(tmp_path / "full"), train=TrainOptions(epochs=1))
    assert pipeline.run(options) is None and calls
    unlabelled = sample_head(tmp_path, "search_texts.txt", 30)
    assert pipeline.run(pipeline.ExportOptions(corpus=[str(unlabelled)], out=str(out), model=str(tiny_bert))) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus.txt", "search_texts.txt"])


# --- Two real processes over gloo (what accelerate launch / torchrun start on a CPU-only machine) ---

@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tmp_path_factory, wordpiece_tokenizer) -> Path:
    """Dropout masks are drawn per process, so only a model without dropout trains to the same numbers."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert-no-dropout"), "bert", wordpiece_tokenizer,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def launch_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def export_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--corpus", str(corpus), "--out", str(out), "--quantize", "none", "--batch-size", "8",
            "--lr", "1e-3", *extra]


def read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_two_processes_train_the_model_one_process_trains(tmp_path, tiny_bert_without_dropout, labelled_corpus):
    one = run_cli(*export_args(tiny_bert_without_dropout, labelled_corpus, tmp_path / "one" / "model.onnx", "--epochs", "2",
                               "--save-full", str(tmp_path / "one-full")))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "pema_export",
         *export_args(tiny_bert_without_dropout, labelled_corpus, tmp_path / "two" / "model.onnx", "--epochs", "2",
                      "--save-full", str(tmp_path / "two-full"))],
        capture_output=True, text=True, env=launch_env(), timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("bundle      ") == 1  # process 0 alone wrote and summarised a bundle
    assert "2 processes sharing each batch of 8" in two.stderr
    manifest = json.loads((tmp_path / "two" / "pema-manifest.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["training"]["batch_size"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "one", "one-full", "two", "two-full"]
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no staging folder left
    pretrained = read_weights(tiny_bert_without_dropout)
    one_weights, two_weights = read_weights(tmp_path / "one-full"), read_weights(tmp_path / "two-full")
    moved = max((one_weights[f"bert.{k}"] - pretrained[k]).abs().max().item() for k in pretrained if f"bert.{k}" in one_weights)
    differ = max((one_weights[k] - two_weights[k]).abs().max().item() for k in one_weights)
    assert moved > 1e-2 and differ < 1e-5, (moved, differ)


def test_a_process_that_dies_leaves_the_earlier_bundle_and_writes_nothing(tmp_path, tiny_bert_without_dropout, labelled_corpus):
    import psutil

    out = tmp_path / "b" / "model.onnx"
    earlier = run_cli(*export_args(tiny_bert_without_dropout, labelled_corpus, out, "--epochs", "1"))
    assert earlier.returncode == 0, earlier.stderr
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pema_export",
         *export_args(tiny_bert_without_dropout, labelled_corpus, out, "--epochs", "500", "--save-full", str(tmp_path / "full"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=launch_env(),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("fine-tuning on" in line for line in lines) and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.2)
        assert any("fine-tuning on" in line for line in lines), "".join(lines)[-3000:]
        time.sleep(1)  # into the 500 epochs (or still joining the process group: either way it must write nothing)
        victims = [child for child in psutil.Process(launcher.pid).children(recursive=True) if child.environ().get("RANK") == "1"]
        assert len(victims) == 1
        victims[0].kill()
        launcher.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before  # no staging folder, no changed file
    assert not (tmp_path / "full").exists()


def test_processes_that_read_different_data_refuse_to_train(tmp_path):
    script = tmp_path / "differ.py"
    script.write_text(
        "import os, sys\n"
        "from pema_export.devices import Replicas, resolve_placement\n"
        "from pema_export.errors import DeviceError\n"
        "replicas = Replicas(resolve_placement('cpu', 'fp32'))\n"
        "replicas.check_same('training texts', 'same')\n"
        "try:\n"
        "    replicas.check_same('training texts', 'corpus of rank ' + os.environ['RANK'])\n"
        "except DeviceError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                            capture_output=True, text=True, env=launch_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("process 1 of 2 has other training texts than process 0; every machine needs the same "
                               "corpus files and model") == 2


CUDA_RUNS = {  # --device, --precision: each way of naming the GPU, each precision (fp16 is the GradScaler's path)
    "cuda-fp32": ("cuda", "fp32"),
    "cuda0-bf16": ("cuda:0", "bf16"),
    "auto-fp16": ("auto", "fp16"),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a machine with one)")
@pytest.mark.parametrize("case", sorted(CUDA_RUNS))
def test_cuda_training_exports_and_verifies(tmp_path, tiny_bert, labelled_corpus, case):
    device, precision = CUDA_RUNS[case]
    result = run_cli("--model", tiny_bert, "--corpus", labelled_corpus, "--out", tmp_path / "b" / "model.onnx", "--epochs", "1",
                     "--device", device, "--precision", precision, "--save-full", tmp_path / "full")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "pema-manifest.json").read_text())
    training = manifest["training"]
    assert training["device"] == "cuda:0" and training["precision"] == precision
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "full" / "model.safetensors").is_file()  # --save-full wrote from the CPU copy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a machine with one)")
def test_cuda_token_classification_exports_and_verifies(tmp_path, tiny_bert):
    corpus = sample_head(tmp_path, "slot_texts.jsonl", 64)
    result = run_cli("--model", tiny_bert, "--corpus", corpus, "--out", tmp_path / "b" / "model.onnx", "--epochs", "1",
                     "--device", "cuda", "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "b" / "pema-manifest.json").read_text())
    assert manifest["model"]["task"] == "token-classification"
    assert manifest["training"]["device"] == "cuda:0" and manifest["training"]["precision"] == "bf16"
    assert manifest["parity"]["max_abs_diff"] <= 1e-4

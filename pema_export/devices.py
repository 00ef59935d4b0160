"""Where fine-tuning runs: the device (``--device cpu|cuda|cuda:N|auto``), the training precision (``--precision``),
and the processes of a data-parallel launch (``accelerate launch`` or ``torchrun``).

Only training runs there. ``to_cpu_fp32`` brings the trained model back, once, and everything after training
(the OOV policy's transform, export, parity, held-out figures, ``--save-full``) runs on the CPU in fp32.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from pema_export.errors import DeviceError

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# accelerate launch passes its --mixed_precision (or its config file's) to the processes in this variable
_ACCELERATE_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Processes:
    """The processes of a data-parallel launch, as the launcher's environment describes them (torchrun and
    ``accelerate launch`` set WORLD_SIZE, RANK and LOCAL_RANK); one process when nothing launched us."""

    count: int = 1
    rank: int = 0  # 0 alone exports, verifies and writes the bundle
    local_rank: int = 0  # on this machine: which GPU the process takes

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Processes":
        environ = os.environ if environ is None else environ
        try:
            count = int(environ.get("WORLD_SIZE", "1"))
            rank = int(environ.get("RANK", "0"))
            local_rank = int(environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise DeviceError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun or accelerate launch)") from None
        return cls(count, rank, local_rank) if count > 1 else cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Placement:
    """Where training runs and in which precision; the master weights and optimizer state are fp32 in every case."""

    device: torch.device
    reason: str  # what was asked and, for auto, what was visible: the manifest records it
    precision: str = "fp32"
    processes: Processes = Processes()

    def autocast(self):
        """bf16/fp16: matrix products in that precision, reductions and the loss in fp32 (torch's autocast lists)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none (disabled: a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def resolve_placement(device: str = "cpu", precision: str | None = "fp32", environ: Mapping[str, str] | None = None) -> Placement:
    """Check ``--device`` and ``--precision`` against this machine and the launch, before any work: a missing GPU,
    or a precision the hardware lacks, is one clear line, not a trace."""
    environ = os.environ if environ is None else environ
    processes = Processes.from_environment(environ)
    chosen, reason = _device(device, processes)
    return Placement(chosen, reason, _precision(precision, chosen, environ), processes)


def to_cpu_fp32(model: nn.Module) -> nn.Module:
    """The trained model back on the CPU with fp32 floating-point weights and buffers (integer buffers such as
    position ids keep their type): the one place training hands over to export, verification and --save-full."""
    return model.to(device="cpu", dtype=torch.float32)


def _device(name: str, processes: Processes) -> tuple[torch.device, str]:
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"--device auto: {_no_gpu()}; trained on the CPU"
        device = _gpu_of(processes, "auto")
        return device, f"--device auto: {torch.cuda.device_count()} CUDA GPU(s) visible; took {device} ({torch.cuda.get_device_name(device)})"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: unknown device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cpu":
        return device, f"--device {name}"
    if device.type != "cuda":
        raise DeviceError(f"--device {name}: unsupported; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: {_no_gpu()}; use --device cpu")
    if processes.count > 1 and device.index is not None:
        raise DeviceError(f"--device {name}: in a launch of {processes.count} processes each process takes the GPU of "
                          "its local rank; pass --device cuda")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    device = _gpu_of(processes, name) if device.index is None else device
    return device, f"--device {name}: {torch.cuda.get_device_name(device)}"


def _gpu_of(processes: Processes, asked: str) -> torch.device:
    """One process: the current GPU; a launch: the GPU of the process's local rank (what accelerate picks too)."""
    if processes.count == 1:
        return torch.device("cuda", torch.cuda.current_device())
    if processes.local_rank >= torch.cuda.device_count():
        raise DeviceError(f"--device {asked}: process {processes.rank} has local rank {processes.local_rank} but this "
                          f"machine has {torch.cuda.device_count()} CUDA GPU(s); launch at most that many processes per machine")
    return torch.device("cuda", processes.local_rank)


def _no_gpu() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA support"
    return "no CUDA GPU is visible"


def _precision(asked: str | None, device: torch.device, environ: Mapping[str, str]) -> str:
    launcher = _ACCELERATE_PRECISION.get(environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    if launcher is None:
        raise DeviceError(f"accelerate's mixed_precision {environ['ACCELERATE_MIXED_PRECISION']!r} is not supported; "
                          f"use {', '.join(PRECISIONS)} (--precision)")
    if asked is None:
        asked = launcher  # accelerate launch --mixed_precision bf16 -m pema_export ... means what it says
    elif launcher != "fp32" and launcher != asked:
        raise DeviceError(f"--precision {asked} but accelerate was launched with mixed_precision {launcher}; give one of them")
    if asked not in PRECISIONS:
        raise DeviceError(f"--precision {asked}: use {', '.join(PRECISIONS)}")
    if asked == "fp32":
        return asked
    missing = _cuda_lacks(asked, device) if device.type == "cuda" else _cpu_lacks(asked)
    if missing:
        raise DeviceError(f"--precision {asked}: {missing}; use --precision fp32")
    return asked


def _cuda_lacks(precision: str, device: torch.device) -> str | None:
    # bf16 arithmetic came with compute capability 8.0 (Ampere); older GPUs only emulate it. fp16 runs on every GPU
    # torch supports.
    major, minor = torch.cuda.get_device_capability(device)
    if precision == "bf16" and major < 8:
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no bf16; it needs 8.0 or newer"
    return None


def _cpu_lacks(precision: str) -> str | None:
    # torch's own test of whether oneDNN has bf16 / fp16 kernels for this CPU (x86: AVX-512 or AMX; Arm: its BF16 or
    # FP16 extension). Without them autocast still runs, through slow reference paths; we refuse instead.
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        supported = getattr(torch.ops.mkldnn, check)()
    except (AttributeError, RuntimeError):
        return f"this torch build ({torch.__version__}) cannot tell whether the CPU has {precision}"
    return None if supported else f"this CPU has no {precision} instructions torch can use"


def share_rows(batch_size: int, processes: Processes) -> slice:
    """A process's contiguous share of a global batch; shares differ by at most one text, and may be empty (a last
    batch smaller than the number of processes)."""
    share, extra = divmod(batch_size, processes.count)
    start = processes.rank * share + min(processes.rank, extra)
    return slice(start, start + share + (processes.rank < extra))


def share_weight(share_items: int, batch_items: int, processes: Processes) -> float:
    """Loss weight of a share holding ``share_items`` of the batch's ``batch_items`` loss terms (texts, or labelled
    tokens): the share's mean loss times its part of the batch, times N because DistributedDataParallel averages
    (divides the summed gradients by N)."""
    return processes.count * share_items / batch_items


class Replicas:
    """The model as this process trains it. One process: the model itself, on the device. A launch of N processes:
    accelerate starts the process group (gloo on CPUs, NCCL on GPUs) and wraps the model in DistributedDataParallel,
    which averages the gradients of every step over the processes, so every process holds the same weights.

    The batch is global: ``--batch-size`` texts per step over all processes together; each process runs its
    contiguous share of every batch (``rows``), and its loss is weighted by that share (``weight``), so the averaged
    gradient is the gradient of the whole batch's mean loss, as one process computes it."""

    def __init__(self, placement: Placement):
        self.placement = placement
        self.processes = placement.processes
        self._accelerator = None
        if self.processes.count > 1:
            from accelerate import Accelerator

            # precision is ours (Placement.autocast), so accelerate's own mixed precision stays off
            self._accelerator = Accelerator(cpu=placement.device.type == "cpu", mixed_precision="no")
            if self._accelerator.num_processes != self.processes.count:
                raise DeviceError(f"the launch says {self.processes.count} processes, accelerate found "
                                  f"{self._accelerator.num_processes}")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in training (``model`` itself, or its DistributedDataParallel wrapper); ``model`` is
        trained in place either way."""
        if self._accelerator is None:
            return model.to(self.placement.device)
        return self._accelerator.prepare_model(model)

    def rows(self, batch_size: int) -> slice:
        return share_rows(batch_size, self.processes)

    def weight(self, share_items: int, batch_items: int) -> float:
        return share_weight(share_items, batch_items, self.processes)

    def check_same(self, what: str, fingerprint: str) -> None:
        """Every process must train on the same data and model: each reads the corpus itself, so a machine with
        other corpus files (or another model folder) would silently train something else."""
        if self._accelerator is None:
            return
        from accelerate.utils import gather_object

        try:
            seen = gather_object([fingerprint])
        except RuntimeError as exc:
            raise self.failed(exc) from exc
        differing = [rank for rank, other in enumerate(seen) if other != seen[0]]
        if differing:
            # every process sees the same list and stops here: leave the process group together, or gloo's threads are
            # still running when the interpreter exits and abort it ("terminate called without an active exception")
            self._accelerator.end_training()  # destroys the process group
            raise DeviceError(f"process {differing[0]} of {self.processes.count} has other {what} than process 0; "
                              "every machine needs the same corpus files and model")

    def finish(self) -> None:
        """Wait until every process has finished training, then leave the process group: process 0 writes the
        bundle only once no process can fail training any more."""
        if self._accelerator is not None:
            self._accelerator.wait_for_everyone()
            self._accelerator.end_training()

    def failed(self, exc: RuntimeError) -> DeviceError:
        """A step that failed in a launch, typically a gradient exchange because another process stopped (killed,
        out of memory), as one clear line."""
        # gloo/NCCL messages start with a source location and run on: keep the first sentence
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return DeviceError(f"process {self.processes.rank} of {self.processes.count}: training stopped "
                           f"({text.split('. ')[0][:200]}), most likely because another process of the launch did; "
                           "nothing was written")

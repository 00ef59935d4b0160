"""Wall seconds per named step of an export, printed as each step ends and written beside the manifest.

They go to their own file, ``pema-timings.json``, not into ``pema-manifest.json``: the manifest is promised to be
byte-identical for the same inputs and seed (a team can hash it, or commit it as a size baseline), and wall times
differ on every run. The timings file is written into the staging folder with the bundle and moves into place with
it, so it always describes the bundle beside it; the manifest's ``files`` does not list it and ``pema-export size``
does not count it (nothing an app ships reads it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

TIMINGS_NAME = "pema-timings.json"

# The steps up to and including training; every later step is post-training time, except one that ran beside
# another (fidelity beside export), which is recorded with its own wall time but not added to the total.
UP_TO_TRAINING = ("prepare", "scan", "string input plan", "partial model", "train")


class Timings:
    """Records ``{step: seconds}`` in the order steps end; safe to use from a helper thread."""

    def __init__(self, log: Callable[[str], None] = lambda message: None):
        self.seconds: dict[str, float] = {}
        self.concurrent: dict[str, str] = {}  # step -> the step it ran beside
        self._log = log
        self._lock = threading.Lock()

    @contextmanager
    def step(self, name: str, beside: str | None = None) -> Iterator[None]:
        """Time the body as ``name``; a step that fails is not recorded (its error is the line the user needs)."""
        start = time.perf_counter()
        yield
        self.record(name, time.perf_counter() - start, beside)

    def record(self, name: str, seconds: float, beside: str | None = None) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            if beside:
                self.concurrent[name] = beside
        self._log(f"{name}: {seconds:.1f} s" + (f" (beside {beside})" if beside else ""))

    def post_training_steps(self) -> list[str]:
        return [name for name in self.seconds if name not in UP_TO_TRAINING and name not in self.concurrent]

    def post_training_seconds(self) -> float:
        return sum(self.seconds[name] for name in self.post_training_steps())

    def as_json(self) -> dict:
        training = self.seconds.get("train")
        post = self.post_training_seconds()
        return {
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
            "concurrent": dict(self.concurrent),
            "post_training_seconds": round(post, 3),
            "post_training_steps": self.post_training_steps(),
            "post_training_to_training": round(post / training, 4) if training else None,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }

    def to_text(self) -> str:
        return json.dumps(self.as_json(), indent=2) + "\n"

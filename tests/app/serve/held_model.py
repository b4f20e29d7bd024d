"""A torch module that holds each request with a non-zero input until a file appears.

Tests fill a replica's request slots with it deterministically (no sleeps, no timing): requests stay
in flight exactly until the test creates ``release``. The warm-up run at load (zeros) passes through.
Imported inside Ray workers too (the test application's ``runtime_env`` puts this folder on
PYTHONPATH).
"""

from __future__ import annotations

import os
import time

import torch

WIDTH = 4


class Held(torch.nn.Module):
    def __init__(self, release: str, width: int = WIDTH, give_up_s: float = 120.0) -> None:
        super().__init__()
        self.release = release
        self.give_up_s = give_up_s  # a failed test must not leave a replica stuck forever
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.any()):
            deadline = time.monotonic() + self.give_up_s
            while not os.path.exists(self.release) and time.monotonic() < deadline:
                time.sleep(0.01)
        return self.linear(x)

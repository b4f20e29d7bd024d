"""PyTorch module classes shipped with the package, for ``torch_state_dict`` models.

A state dict holds weights only; the architecture is code, so it lives here (in the image) and the
config names it: ``models.torch-state.module: manymodels.demo.modules:MLP``.
"""

from __future__ import annotations

import torch


class MLP(torch.nn.Module):
    """``inputs -> hidden -> outputs`` with a ReLU: the demo's ``torch-state`` model."""

    def __init__(self, inputs: int = 64, hidden: int = 96, outputs: int = 10) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

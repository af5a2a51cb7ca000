"""Fully connected networks: an MLP with ReLU and the bias-free linear networks of
the matrix-factorisation experiments (SLS, SPS and ALI-G+ papers)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers of ``hidden_sizes``, then a linear head."""

    def __init__(self, in_features: int, hidden_sizes: Sequence[int] = (512, 256), num_outputs: int = 10, bias: bool = True):
        super().__init__()
        if in_features < 1 or num_outputs < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(
                f"in_features ({in_features}), hidden_sizes ({tuple(hidden_sizes)}) and num_outputs ({num_outputs}) "
                "must all be positive"
            )
        layers: list = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden, bias=bias), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_outputs, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LinearNetwork(nn.Module):
    """A product of weight matrices without bias or activation: in -> hidden... -> out.

    ``LinearNetwork(6, [k], 10)`` is the rank-k factorisation W2 W1 of the
    matrix-factorisation task; ``LinearNetwork(6, [], 10)`` is the "true model"
    (one full 10x6 matrix).
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], out_features: int):
        super().__init__()
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden_sizes):
            raise ValueError(
                f"in_features ({in_features}), hidden_sizes ({tuple(hidden_sizes)}) and out_features ({out_features}) "
                "must all be positive"
            )
        sizes = [in_features, *hidden_sizes, out_features]
        self.layers = nn.Sequential(*(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:])))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

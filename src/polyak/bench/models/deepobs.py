"""The networks of DeepOBS's test problems (Schneider, Balles & Hennig, ICLR 2019),
rebuilt from the definitions of its PyTorch port (deepobs/pytorch/testproblems):
layer sizes, initialisation and the noisy quadratic's Hessian.

- ``mnist_logreg``: flatten, one Linear(784, 10); weights and biases start at 0.
- ``mnist_mlp`` / ``fmnist_mlp``: Linear 784-1000-500-100-10 with ReLU; weights drawn
  from a normal with std 0.03 truncated at 2 std, biases 0.
- ``fmnist_2c2d``: conv 5x5 (32, "same" padding) - ReLU - max-pool 2, conv 5x5 (64,
  "same") - ReLU - max-pool 2, Linear(3136, 1024) - ReLU, Linear(1024, 10); every weight
  truncated normal std 0.05 (2 std), every bias 0.05. A "same" 5x5 convolution with
  stride 1 is symmetric padding 2, and 2x2 pooling of 28 and 14 needs no padding, so
  plain torch layers give TensorFlow's shapes exactly.
- ``quadratic_deep``: 0.5 (theta - x)^T H (theta - x) per sample, theta in R^100 starting
  at ones; H = R^T diag(lambda) R with 90 eigenvalues from U(0, 1) and 10 from U(30, 60),
  R a Haar-random rotation; every draw from one numpy RandomState(42), in DeepOBS's order.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LogReg", "DeepOBSMLP", "TwoConvTwoDense", "NoisyQuadratic", "deep_quadratic_hessian",
           "haar_rotation", "truncated_normal_"]


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal(0, std) truncated at +-2 std (TensorFlow's truncated_normal, DeepOBS's init)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


class LogReg(nn.Sequential):
    """Multinomial logistic regression on flattened 28x28 images, zero-initialised."""

    def __init__(self, num_outputs: int = 10):
        super().__init__(nn.Flatten(), nn.Linear(784, num_outputs))
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)


class DeepOBSMLP(nn.Sequential):
    """784-1000-500-100-10 ReLU network of DeepOBS's mnist_mlp and fmnist_mlp."""

    def __init__(self, num_outputs: int = 10):
        sizes = (784, 1000, 500, 100)
        layers: list = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_outputs))
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated_normal_(module.weight, 3e-2)
                nn.init.zeros_(module.bias)


class TwoConvTwoDense(nn.Sequential):
    """DeepOBS's 2c2d network (mnist_2c2d, fmnist_2c2d)."""

    def __init__(self, num_outputs: int = 10):
        super().__init__(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Linear(1024, num_outputs),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                truncated_normal_(module.weight, 0.05)
                nn.init.constant_(module.bias, 0.05)


def haar_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation drawn from the Haar measure on SO(dim) by the subgroup algorithm
    (Diaconis & Shahshahani 1987), consuming ``rng`` as DeepOBS does: one uniform
    angle for SO(2), then one standard-normal vector of length d+1 per step d."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    angle = 2 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v = v / np.sqrt(v.T @ v)
        e1 = np.zeros((d + 1, 1))
        e1[0, 0] = 1.0
        x = (e1 - v) / np.sqrt((e1 - v).T @ (e1 - v))  # the Householder reflection taking e1 to v
        embedded = np.zeros((d + 1, d + 1))
        embedded[0, 0] = 1.0
        embedded[1:, 1:] = rotation
        rotation = embedded - 2 * np.outer(x, x.T @ embedded)
    return -rotation  # the reflections flip the determinant's sign; negate it back


def deep_quadratic_hessian(dim: int = 100, seed: int = 42) -> np.ndarray:
    """DeepOBS quadratic_deep's Hessian (float64): 90% of eigenvalues in (0, 1), 10% in (30, 60)."""
    rng = np.random.RandomState(seed)
    small = int(round(0.9 * dim))
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, small), rng.uniform(30.0, 60.0, dim - small)])
    rotation = haar_rotation(dim, rng)
    return rotation.T @ np.diag(eigenvalues) @ rotation


class NoisyQuadratic(nn.Module):
    """theta in R^dim (starting at ones); forward(x [n, dim]) -> the n per-sample losses
    0.5 (theta - x)^T H (theta - x)."""

    def __init__(self, hessian: np.ndarray):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(hessian.shape[0]))
        self.register_buffer("hessian", torch.tensor(hessian, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        q = self.theta - x
        return 0.5 * ((q @ self.hessian) * q).sum(dim=1)

"""Wide residual networks (Zagoruyko & Komodakis, 2016).

WRN-d-k has (d - 4) / 6 pre-activation basic blocks in each of three stages of
16k, 32k and 64k channels. The ALI-G paper trains WRN-16-4 on SVHN and WRN-40-4
on CIFAR; the benchmark uses WRN-16-4 by default to keep CPU runs feasible.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _PreActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            None
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        # The projection sees the activated input, as in the WRN paper's code.
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + residual


class WideResNet(nn.Module):
    """WRN-depth-width.

    Args:
        depth: total depth d; (d - 4) must be divisible by 6 (10, 16, 22, 28, 40, ...).
        width: widening factor k.
        in_channels, num_classes: input channels and outputs.
        dropout: dropout between the two convolutions of each block (ALI-G's SVHN runs: 0.4).
    """

    def __init__(self, depth: int = 16, width: int = 4, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40), got {depth}")
        if width < 1:
            raise ValueError(f"width (the widening factor k) must be a positive integer, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers = []
        channels = widths[0]
        for stage_index, stage_width in enumerate(widths[1:]):
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                layers.append(_PreActBlock(channels, stage_width, stride, dropout))
                channels = stage_width
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))
